<?php
// Sonde demo: a small fan-community API in the spirit of the reference
// customer (sign-in, photo listing by language and hash, likes and votes).
// Backed by SQLite through PDO so it needs no database server. Every route
// answers JSON; unknown routes answer 404.
declare(strict_types=1);

header('Content-Type: application/json');

function db(): PDO
{
    static $pdo = null;
    if ($pdo !== null) {
        return $pdo;
    }
    $path = getenv('SONDE_DEMO_DB') ?: (sys_get_temp_dir() . '/sonde-demo.sqlite');
    $pdo = new PDO('sqlite:' . $path, null, null, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
    $pdo->exec('PRAGMA journal_mode=WAL');
    $pdo->exec('PRAGMA busy_timeout=2000');
    $pdo->exec('CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT UNIQUE, password_hash TEXT)');
    $pdo->exec('CREATE TABLE IF NOT EXISTS photos (id INTEGER PRIMARY KEY, hash TEXT UNIQUE, lang TEXT, title TEXT, likes INTEGER DEFAULT 0)');
    $pdo->exec('CREATE TABLE IF NOT EXISTS votes (id INTEGER PRIMARY KEY, user_id INTEGER, photo_id INTEGER, score INTEGER)');
    if ((int)$pdo->query('SELECT COUNT(*) FROM photos')->fetchColumn() === 0) {
        $pdo->beginTransaction();
        $ins = $pdo->prepare('INSERT OR IGNORE INTO photos (hash, lang, title) VALUES (?, ?, ?)');
        foreach (['ko', 'en', 'ja', 'zh'] as $lang) {
            for ($i = 1; $i <= 50; $i++) {
                $ins->execute([substr(sha1("$lang-$i"), 0, 20), $lang, "photo $i ($lang)"]);
            }
        }
        $u = $pdo->prepare('INSERT OR IGNORE INTO users (name, password_hash) VALUES (?, ?)');
        for ($i = 1; $i <= 20; $i++) {
            $u->execute(["fan$i", password_hash("pw$i", PASSWORD_DEFAULT, ['cost' => 4])]);
        }
        $pdo->commit();
    }
    return $pdo;
}

function respond(int $status, array $body): void
{
    http_response_code($status);
    echo json_encode($body), "\n";
}

function input(): array
{
    $raw = file_get_contents('php://input');
    $json = $raw ? json_decode($raw, true) : null;
    return is_array($json) ? $json : $_POST;
}

$method = $_SERVER['REQUEST_METHOD'] ?? 'GET';
$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH) ?: '/';

switch (true) {
    case $path === '/' || $path === '/health':
        respond(200, ['ok' => true]);
        break;

    case $path === '/api/v6/signin' && $method === 'POST':
        $in = input();
        $st = db()->prepare('SELECT id, password_hash FROM users WHERE name = ?');
        $st->execute([$in['user'] ?? '']);
        $row = $st->fetch(PDO::FETCH_ASSOC);
        if ($row && password_verify((string)($in['password'] ?? ''), $row['password_hash'])) {
            respond(200, ['token' => bin2hex(random_bytes(16)), 'user_id' => (int)$row['id']]);
        } else {
            respond(401, ['error' => 'bad credentials']);
        }
        break;

    case $path === '/api/v6/photos' && $method === 'GET':
        $lang = $_GET['lang'] ?? 'ko';
        $page = max(1, (int)($_GET['page'] ?? 1));
        $st = db()->prepare('SELECT hash, title, likes FROM photos WHERE lang = ? ORDER BY id LIMIT 20 OFFSET ?');
        $st->execute([$lang, ($page - 1) * 20]);
        respond(200, ['photos' => $st->fetchAll(PDO::FETCH_ASSOC)]);
        break;

    case preg_match('#^/api/v6/photos/([0-9a-f]{8,64})$#', $path, $m) === 1 && $method === 'GET':
        $st = db()->prepare('SELECT hash, lang, title, likes FROM photos WHERE hash = ?');
        $st->execute([$m[1]]);
        $row = $st->fetch(PDO::FETCH_ASSOC);
        $row ? respond(200, $row) : respond(404, ['error' => 'no such photo']);
        break;

    case preg_match('#^/api/v6/photos/([0-9a-f]{8,64})/like$#', $path, $m) === 1 && $method === 'POST':
        $st = db()->prepare('UPDATE photos SET likes = likes + 1 WHERE hash = ?');
        $st->execute([$m[1]]);
        $st->rowCount() ? respond(200, ['liked' => $m[1]]) : respond(404, ['error' => 'no such photo']);
        break;

    case $path === '/api/v6/votes' && $method === 'POST':
        $in = input();
        $st = db()->prepare('INSERT INTO votes (user_id, photo_id, score) VALUES (?, ?, ?)');
        $st->execute([(int)($in['user_id'] ?? 1), (int)($in['photo_id'] ?? 1), (int)($in['score'] ?? 1)]);
        respond(201, ['vote' => (int)db()->lastInsertId()]);
        break;

    case $path === '/api/v6/slow':
        // A deliberately slow page: sleeps `ms` milliseconds (default 50).
        $ms = min(10000, max(0, (int)($_GET['ms'] ?? 50)));
        usleep($ms * 1000);
        respond(200, ['slept_ms' => $ms]);
        break;

    case $path === '/api/v6/boom':
        throw new RuntimeException('demo failure');

    default:
        respond(404, ['error' => 'not found', 'path' => $path]);
}
