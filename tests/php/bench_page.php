<?php
// A realistic API page for the overhead benchmark: 10 SQL statements
// through PDO-MySQL (one fetching 100 rows), and one outgoing HTTP call.
declare(strict_types=1);
header('Content-Type: application/json');
static $db = null;
$db = new PDO('mysql:host=127.0.0.1;port=3306;dbname=test', 'root', '', [
    PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
    PDO::ATTR_PERSISTENT => true,
]);
$db->exec('CREATE TABLE IF NOT EXISTS sonde_bench (id INT PRIMARY KEY, lang CHAR(2), title VARCHAR(40), likes INT DEFAULT 0)');
if ((int)$db->query('SELECT COUNT(*) FROM sonde_bench')->fetchColumn() < 400) {
    $values = implode(',', array_map(fn ($i) => "($i, '" . ['ko', 'en', 'ja', 'zh'][$i % 4] . "', 'photo $i')", range(1, 400)));
    $db->exec("INSERT IGNORE INTO sonde_bench (id, lang, title) VALUES $values");
}
$lang = ['ko', 'en', 'ja', 'zh'][random_int(0, 3)];
$out = [];
$st = $db->prepare('SELECT id, title, likes FROM sonde_bench WHERE lang = ? ORDER BY id LIMIT 100');
$st->execute([$lang]);
$out['photos'] = $st->fetchAll(PDO::FETCH_ASSOC);
for ($i = 0; $i < 7; $i++) {
    $one = $db->prepare('SELECT title FROM sonde_bench WHERE id = ?');
    $one->execute([random_int(1, 400)]);
    $out['t'][] = $one->fetchColumn();
}
$db->exec('UPDATE sonde_bench SET likes = likes + 1 WHERE id = ' . random_int(1, 400));
$out['count'] = (int)$db->query("SELECT COUNT(*) FROM sonde_bench WHERE lang = '$lang'")->fetchColumn();
$ch = curl_init('http://127.0.0.1:' . $_SERVER['SERVER_PORT'] . '/ping');
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
curl_exec($ch);
$out['ping'] = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
echo json_encode($out);
