<?php
// phpredis commands against the local Redis, for the cache span test.
declare(strict_types=1);
header('Content-Type: text/plain');
$r = new Redis();
$r->connect('127.0.0.1', 6379);
$key = 'sonde:e2e:' . getmypid();
$r->set($key, 'v1');
$v = $r->get($key);
$r->hSet("$key:h", 'f', '1');
$h = $r->hGetAll("$key:h");
$r->del($key, "$key:h");
echo "$v ", json_encode($h), "\n";
