<?php
// Hooked calls inside hot, JIT-compiled code, for the opcache/JIT test.
declare(strict_types=1);
header('Content-Type: text/plain');
if (isset($_GET['status'])) {
    $s = opcache_get_status(false);
    echo json_encode(['jit' => $s['jit']['on'] ?? false, 'preloaded' => function_exists('sonde_preloaded_sum')]);
    return;
}
$db = new PDO('sqlite::memory:');
$db->exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)');
$ins = $db->prepare('INSERT INTO t (v) VALUES (?)');
for ($i = 0; $i < 20; $i++) {
    $ins->execute([$i * 3]);
}
$sum = 0;
$st = $db->query('SELECT v FROM t');
while (($row = $st->fetch(PDO::FETCH_NUM)) !== false) {
    $sum += $row[0];
}
echo sonde_preloaded_sum($sum, 10), "\n";
