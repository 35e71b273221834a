<?php
// Memcached commands for the cache-span test: hits, a miss and an `add`
// of an existing key (answers, not errors), a failing increment, and a
// server that does not answer. The port of the test's memcached is ?port=.
declare(strict_types=1);
header('Content-Type: text/plain');
$m = new Memcached();
$m->addServer('127.0.0.1', (int)($_GET['port'] ?? 11211));
$k = 'sonde:e2e:' . getmypid();
$m->set($k, 'v1');
echo $m->get($k), ' ';
var_dump($m->get("$k:missing"));
var_dump($m->add($k, 'other'));
var_dump($m->increment($k));
var_dump($m->delete($k));
$dead = new Memcached();
$dead->addServer('127.0.0.1', 1);
var_dump($dead->get($k));
