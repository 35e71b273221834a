<?php
// A request that sits in one long SQL statement, for the in-flight test.
declare(strict_types=1);
header('Content-Type: text/plain');
$s = max(1, min(30, (int)($_GET['s'] ?? 3)));
$db = new PDO('mysql:host=127.0.0.1;port=3306;dbname=test', 'root', '');
$db->query("SELECT SLEEP($s)");
echo "slept $s\n";
