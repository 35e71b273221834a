<?php
// Known SQL work through PDO against the local MariaDB, for the
// end-to-end capture test. Spans expected (in order) are asserted there.
declare(strict_types=1);
header('Content-Type: text/plain');

$table = 'sonde_e2e_' . preg_replace('/[^a-z0-9]/', '', $_GET['t'] ?? 'x');
$db = new PDO('mysql:host=127.0.0.1;port=3306;dbname=test', 'root', '', [
    PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
]);
$db->exec("DROP TABLE IF EXISTS $table");                                   // 1
$db->exec("CREATE TABLE $table (id INT PRIMARY KEY, name VARCHAR(40))");    // 2
$ins = $db->prepare("INSERT INTO $table (id, name) VALUES (?, ?)");
$ins->execute([1, 'one']);                                                  // 3
$ins->execute([2, 'two']);                                                  // 4
$values = implode(',', array_map(fn ($i) => "($i, 'row$i')", range(3, 1002)));
$db->exec("INSERT INTO $table (id, name) VALUES $values");                  // 5 (1000 rows)
$one = $db->query("SELECT name FROM $table WHERE id = 1");                  // 6
$name = $one->fetchColumn();                                                // fetch: 1 row
$all = $db->query("SELECT id, name FROM $table ORDER BY id LIMIT 1000");    // 7
$rows = $all->fetchAll();                                                   // fetch: 1000 rows
$sel = $db->prepare("SELECT name FROM $table WHERE id IN (?, ?, ?)");
$sel->execute([1, 2, 3]);                                                   // 8
while ($sel->fetch()) {                                                     // fetch: 3 rows, 4 calls
}
$upd = $db->exec("UPDATE $table SET name = 'x' WHERE id <= 10");           // 9 (10 rows)
try {
    $db->query("SELECT * FROM no_such_table_sonde");                        // 10 (error)
} catch (PDOException $e) {
    echo "caught ", get_class($e), "\n";
}
$db->exec("DROP TABLE $table");                                              // 11 (clean up)
echo "name=$name rows=", count($rows), " updated=$upd\n";
