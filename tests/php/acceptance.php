<?php
// The extension issue's acceptance page: 10 PDO-MySQL statements (one
// fetchAll of 1,000 rows), a mysqli prepared statement, a pg_query with a
// fetch loop, 2 Redis commands and a curl call to another local page.
declare(strict_types=1);
header('Content-Type: text/plain');
$t = 'sonde_acc_' . preg_replace('/[^0-9]/', '', $_GET['t'] ?? '0');

$db = new PDO('mysql:host=127.0.0.1;port=3306;dbname=test', 'root', '', [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
$db->exec("DROP TABLE IF EXISTS $t");
$db->exec("CREATE TABLE $t (id INT PRIMARY KEY, name VARCHAR(40))");
$db->exec("INSERT INTO $t (id, name) VALUES " . implode(',', array_map(fn ($i) => "($i, 'n$i')", range(1, 1000))));
$all = $db->query("SELECT id, name FROM $t ORDER BY id")->fetchAll();
for ($i = 1; $i <= 4; $i++) {
    $db->exec("UPDATE $t SET name = 'x' WHERE id = $i");
}
$count = $db->query("SELECT COUNT(*) FROM $t")->fetchColumn();
$db->exec("DELETE FROM $t WHERE id > 990");

mysqli_report(MYSQLI_REPORT_OFF);
$m = new mysqli('127.0.0.1', 'root', '', 'test', 3306);
$st = $m->prepare("SELECT name FROM $t WHERE id = ?");
$id = 5;
$st->bind_param('i', $id);
$st->execute();
$res = $st->get_result();
while ($row = $res->fetch_assoc()) {
    $name = $row['name'];
}

$pg = pg_connect('host=127.0.0.1 port=5432 dbname=test user=postgres');
$q = pg_query($pg, 'SELECT generate_series(1, 5) AS n');
$sum = 0;
while ($r = pg_fetch_row($q)) {
    $sum += (int)$r[0];
}

$redis = new Redis();
$redis->connect('127.0.0.1', 6379);
$redis->set("sonde:acc:$t", 'v');
$v = $redis->get("sonde:acc:$t");

$ch = curl_init('http://127.0.0.1:' . $_SERVER['SERVER_PORT'] . '/t/callee.php');
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
$callee = curl_exec($ch);
$db->exec("DROP TABLE $t");
echo count($all), " $count $name $sum $v ", $callee, "\n";
