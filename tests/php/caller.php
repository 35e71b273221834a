<?php
// Calls callee.php through nginx with curl (with a header of its own), and
// a closed port, for the end-to-end external-call and trace-linking test.
declare(strict_types=1);
header('Content-Type: text/plain');
$port = (int)$_SERVER['SERVER_PORT'];
$ch = curl_init("http://127.0.0.1:$port/t/callee.php?token=secret&x=1");
curl_setopt($ch, CURLOPT_HTTPHEADER, ['X-App: kept']);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
$body = curl_exec($ch);
echo "callee said: $body\n";
$bad = curl_init('http://127.0.0.1:1/nothing-listens-here');
curl_setopt_array($bad, [CURLOPT_RETURNTRANSFER => true, CURLOPT_CONNECTTIMEOUT_MS => 500]);
var_dump(curl_exec($bad));
