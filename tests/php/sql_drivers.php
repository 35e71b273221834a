<?php
// mysqli (both styles, a prepared statement) and pgsql, for the
// end-to-end capture test.
declare(strict_types=1);
header('Content-Type: text/plain');
mysqli_report(MYSQLI_REPORT_OFF);

$m = new mysqli('127.0.0.1', 'root', '', 'test', 3306);
$m->query('CREATE TABLE IF NOT EXISTS sonde_e2e_mysqli (id INT PRIMARY KEY, v VARCHAR(20))');   // 1
$m->query('DELETE FROM sonde_e2e_mysqli');                                                      // 2
$m->query('INSERT INTO sonde_e2e_mysqli VALUES (1, "a"), (2, "b"), (3, "c")');                  // 3 (3 rows)
$st = $m->prepare('SELECT v FROM sonde_e2e_mysqli WHERE id >= ?');
$min = 2;
$st->bind_param('i', $min);
$st->execute();                                                                                  // 3
$res = $st->get_result();
$got = [];
while ($row = $res->fetch_assoc()) {                                                             // fetch: 2 rows, 3 calls
    $got[] = $row['v'];
}
$r = mysqli_query($m, 'SELECT id FROM sonde_e2e_mysqli ORDER BY id');                          // 4 (3 rows)
$all = mysqli_fetch_all($r);                                                                     // fetch: 3 rows
$bad = $m->query('SELECT * FROM no_such_table_sonde');                                           // 5 (failed)

$pg = pg_connect('host=127.0.0.1 port=5432 dbname=test user=postgres');
$q = pg_query($pg, 'SELECT generate_series(1, 25) AS n');                                        // 6
$n = 0;
while (pg_fetch_assoc($q)) {                                                                     // fetch: 25 rows, 26 calls
    $n++;
}
$p = pg_query_params($pg, 'SELECT $1::int + 1 AS x', [41]);                                      // 7
$x = pg_fetch_result($p, 0, 0);                                                                  // fetch: 1 row
echo implode(',', $got), ' ', count($all), ' ', var_export($bad, true), " $n $x\n";
