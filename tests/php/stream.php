<?php
// PHP's own HTTP client, for the external-call test: file_get_contents and
// fopen on http:// URLs are external spans; local files are not.
declare(strict_types=1);
header('Content-Type: text/plain');
$port = (int)$_SERVER['SERVER_PORT'];
$body = file_get_contents("http://127.0.0.1:$port/t/callee.php?via=stream");
echo "callee said: $body\n";
$local = file_get_contents(__FILE__);
$fh = fopen(__FILE__, 'r');
fclose($fh);
echo 'local ', strlen($local) > 0 ? 'ok' : 'empty', "\n";
var_dump(@fopen('http://127.0.0.1:1/closed', 'r'));
var_dump(@file_get_contents("http://127.0.0.1:$port/t/no_such_page.php"));
$h = fopen("http://127.0.0.1:$port/t/callee.php?via=fopen", 'r');
echo 'fopen ', strlen((string)stream_get_contents($h)) > 0 ? 'ok' : 'empty', "\n";
fclose($h);
