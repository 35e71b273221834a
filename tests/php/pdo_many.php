<?php
// Many PDO calls in one request, for the capture test of the extension's
// queue of calls recorded later (php-ext/src/later.rs): more calls than the
// queue holds, more connections than it remembers, statement texts larger
// than its text space and than the longest text kept, and an exception in
// the middle (recorded at once, between queued calls).
declare(strict_types=1);
header('Content-Type: text/plain');

$table = 'sonde_many_' . preg_replace('/[^a-z0-9]/', '', $_GET['t'] ?? 'x');
$dbs = [];
for ($k = 0; $k < 5; $k++) {
    $dbs[] = new PDO('mysql:host=127.0.0.1;port=3306;dbname=test', 'root', '', [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
    ]);
}
$dbs[0]->exec("DROP TABLE IF EXISTS $table");
$dbs[0]->exec("CREATE TABLE $table (id INT PRIMARY KEY, name VARCHAR(40))");
$dbs[0]->exec("INSERT INTO $table (id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c')");
$names = '';
for ($i = 0; $i < 300; $i++) {
    $st = $dbs[$i % 5]->prepare("SELECT name FROM $table WHERE id = ?");
    $st->execute([$i % 3 + 1]);
    $names .= $st->fetchColumn();
    if ($i === 150) {
        try {
            $dbs[$i % 5]->query('SELECT * FROM no_such_table_sonde');
        } catch (PDOException $e) {
            $names .= '!';
        }
    }
}
// ≈ 29 KB each: past the longest text kept (16 KiB), and five of them past
// the queue's text space (64 KiB).
$in = implode(',', range(1, 5000));
$rows = 0;
for ($k = 0; $k < 5; $k++) {
    $rows += count($dbs[$k]->query("SELECT name FROM $table WHERE id IN ($in)")->fetchAll());
}
$dbs[0]->exec("DROP TABLE $table");
echo 'names=', strlen($names), ' rows=', $rows, "\n";
