<?php
// SoapClient calls for the external-span test: an answer, a SOAP fault the
// server sends, an HTTP error (traced client: PHP keeps the response
// headers) and a refused connection.
declare(strict_types=1);
header('Content-Type: text/plain');
$base = 'http://127.0.0.1:' . $_SERVER['SERVER_PORT'] . '/t';
$client = new SoapClient(null, ['location' => "$base/soap_server.php?q=1", 'uri' => 'urn:sonde']);
echo $client->add(2, 3), "\n";
try {
    $client->fail();
} catch (SoapFault $f) {
    echo 'fault: ', $f->faultstring, "\n";
}
$traced = new SoapClient(null, ['location' => "$base/no_such_soap.php", 'uri' => 'urn:sonde', 'trace' => true, 'exceptions' => false]);
$r = $traced->__soapCall('add', [1, 1]);
echo 'returned ', get_class($r), ': ', $r->faultstring, "\n";
$closed = new SoapClient(null, ['location' => 'http://127.0.0.1:1/soap', 'uri' => 'urn:sonde', 'connection_timeout' => 2]);
try {
    $closed->add(1, 2);
} catch (SoapFault $f) {
    echo 'fault: ', $f->faultcode, "\n";
}
