<?php
// Opens database connections and holds them a moment, for the scoreboard's
// open-connection count: PDO-MySQL, mysqli and pgsql (persistent with
// ?persistent=1), plus an SQLite handle (a file, not a connection) and a
// PDO connection freed at once, a closed one and a failed one (none of
// them open).
declare(strict_types=1);
header('Content-Type: text/plain');
$p = isset($_GET['persistent']);
$pdo = new PDO('mysql:host=127.0.0.1;port=3306;dbname=test', 'root', '', [PDO::ATTR_PERSISTENT => $p]);
$m = new mysqli(($p ? 'p:' : '') . '127.0.0.1', 'root', '', 'test', 3306);
$dsn = 'host=127.0.0.1 port=5432 dbname=test user=postgres';
$pg = $p ? pg_pconnect($dsn) : pg_connect($dsn);
$file = new PDO('sqlite::memory:');
$gone = new PDO('mysql:host=127.0.0.1;port=3306;dbname=test', 'root', '');
$gone = null;
$closed = new mysqli('127.0.0.1', 'root', '', 'test', 3306);
$closed->close();
try {
    new PDO('mysql:host=127.0.0.1;port=1;dbname=test', 'root', '');
} catch (PDOException $e) {
    // A connection that failed is none.
}
usleep((int)($_GET['hold_ms'] ?? 0) * 1000);
echo "held\n";
