<?php
// Local file reads, which must cost nothing with the extension: N rounds of
// file_get_contents() and fopen()/fread()/fclose() on this file
// (bench/local_read_callgrind.sh).
$n = (int)($argv[1] ?? 1000);
for ($i = 0; $i < $n; $i++) {
    $s = file_get_contents(__FILE__);
    $f = fopen(__FILE__, 'r');
    fread($f, 100);
    fclose($f);
}
