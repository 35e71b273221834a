<?php
// opcache.preload script for the JIT test.
function sonde_preloaded_sum(int $a, int $n): int
{
    $x = 0;
    for ($i = 0; $i < $n; $i++) {
        $x += $a;
    }
    return $x;
}
