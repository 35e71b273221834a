<?php
// Cost per instrumented call, from PHP's side: times a loop of PDO fetch()
// calls on an in-memory SQLite result (each one a hooked call that the
// extension aggregates into the result set's fetch span) and prints ns per
// call. Run with and without the extension (bench/call_cost.sh).
$n = (int)($argv[1] ?? 200000);
$db = new PDO('sqlite::memory:');
$db->exec('CREATE TABLE t (id INTEGER PRIMARY KEY)');
// One statement fills the table, so only the fetch loop scales with $n.
$db->exec("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $n) INSERT INTO t SELECT x FROM c");
$best = PHP_INT_MAX;
for ($round = 0; $round < 5; $round++) {
    $st = $db->query('SELECT id FROM t');
    $t = hrtime(true);
    while ($st->fetch(PDO::FETCH_NUM)) {
    }
    $best = min($best, hrtime(true) - $t);
}
printf("%.1f\n", $best / ($n + 1));
