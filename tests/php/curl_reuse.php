<?php
// curl handles run twice, copied, given new headers and reset, and more
// header bytes than the extension's per-request header-list arena holds:
// every call must carry the app's own headers and exactly one
// traceparent, however the extension added it.
declare(strict_types=1);
header('Content-Type: text/plain');
$port = (int)$_SERVER['SERVER_PORT'];
$url = "http://127.0.0.1:$port/t/callee.php";
$ch = curl_init($url);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
echo '1 ', curl_exec($ch), "\n";
echo '2 ', curl_exec($ch), "\n";
curl_setopt($ch, CURLOPT_HTTPHEADER, ['X-App: second']);
echo '3 ', curl_exec($ch), "\n";
$copy = curl_copy_handle($ch);
echo '4 ', curl_exec($copy), "\n";
// The app's own trace header gives way to the request's.
curl_setopt($ch, CURLOPT_HTTPHEADER, ['X-App: third', 'traceparent: 00-0123456789abcdef0123456789abcdef-0123456789abcdef-01']);
echo '5 ', curl_exec($ch), "\n";
echo '6 ', curl_exec($copy), "\n";
unset($ch);
echo '7 ', curl_exec($copy), "\n";
curl_reset($copy);
curl_setopt_array($copy, [CURLOPT_URL => $url, CURLOPT_RETURNTRANSFER => true]);
echo '8 ', curl_exec($copy), "\n";
// 40 handles with 1 KiB of headers each (kept alive): more than the arena.
$pad = str_repeat('p', 1000);
$handles = [];
$ok = 0;
for ($i = 0; $i < 40; $i++) {
    $h = curl_init($url);
    curl_setopt_array($h, [CURLOPT_RETURNTRANSFER => true, CURLOPT_HTTPHEADER => ["X-App: n$i", "X-Pad: $pad"]]);
    $handles[] = $h;
    $ok += curl_exec($h) === "x-app=n$i traceparent=yes" ? 1 : 0;
}
echo "9 $ok\n";
// One list larger than the whole arena (more than nginx takes, so the
// request line and headers curl sent are read back instead).
$h = curl_init($url);
curl_setopt_array($h, [
    CURLOPT_RETURNTRANSFER => true,
    CURLINFO_HEADER_OUT => true,
    CURLOPT_HTTPHEADER => ['X-App: big', 'X-Pad: ' . str_repeat('q', 40000)],
]);
curl_exec($h);
$sent = (string)curl_getinfo($h, CURLINFO_HEADER_OUT);
echo '10 x-app=', preg_match('/^X-App: big\r$/m', $sent), ' traceparent=',
    preg_match_all('/^traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-01\r$/m', $sent), "\n";
