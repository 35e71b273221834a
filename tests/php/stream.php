<?php
// PHP's own HTTP client, for the external-call test.
declare(strict_types=1);
header('Content-Type: text/plain');
$port = (int)$_SERVER['SERVER_PORT'];
$body = file_get_contents("http://127.0.0.1:$port/t/callee.php?via=stream");
echo "callee said: $body\n";
$local = file_get_contents(__FILE__);
echo 'local ', strlen($local) > 0 ? 'ok' : 'empty', "\n";
var_dump(@fopen('http://127.0.0.1:1/closed', 'r'));
