<?php
// Two transfers run together with curl_multi, for the external-call test.
declare(strict_types=1);
header('Content-Type: text/plain');
$port = (int)$_SERVER['SERVER_PORT'];
$mh = curl_multi_init();
$handles = [];
foreach (['a', 'b'] as $name) {
    $ch = curl_init("http://127.0.0.1:$port/t/callee.php?from=multi-$name");
    curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
    curl_multi_add_handle($mh, $ch);
    $handles[$name] = $ch;
}
do {
    $status = curl_multi_exec($mh, $running);
    if ($running) {
        curl_multi_select($mh, 1.0);
    }
} while ($running && $status === CURLM_OK);
foreach ($handles as $name => $ch) {
    echo "$name: ", curl_multi_getcontent($ch), "\n";
    curl_multi_remove_handle($mh, $ch);
}
curl_multi_close($mh);
