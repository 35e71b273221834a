<?php
// Exercises every hooked function in the ways applications use them —
// return values, references, named arguments, error modes, exceptions —
// and prints what PHP returned. The extension must not change one byte.
declare(strict_types=1);

function show(string $label, $value): void
{
    echo $label, ' = ', var_export($value, true), "\n";
}

function attempt(string $label, callable $f): void
{
    try {
        show($label, $f());
    } catch (Throwable $e) {
        echo $label, ' threw ', get_class($e), ': ', $e->getMessage(), "\n";
    }
}

// PDO, every error mode.
foreach ([PDO::ERRMODE_SILENT, PDO::ERRMODE_WARNING, PDO::ERRMODE_EXCEPTION] as $mode) {
    $db = new PDO('sqlite::memory:', null, null, [PDO::ATTR_ERRMODE => $mode]);
    show("pdo[$mode] exec", $db->exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)'));
    show("pdo[$mode] exec rows", $db->exec("INSERT INTO t (v) VALUES ('a'), ('b'), ('c')"));
    attempt("pdo[$mode] bad exec", fn () => @$db->exec('SELECT * FROM nope'));
    attempt("pdo[$mode] bad query", fn () => @$db->query('SELEC oops'));
    $st = $db->prepare('SELECT id, v FROM t WHERE id >= :min ORDER BY id');
    show("pdo[$mode] execute", $st->execute(['min' => 2]));
    show("pdo[$mode] fetch", $st->fetch(PDO::FETCH_ASSOC));
    show("pdo[$mode] fetchColumn", $st->fetchColumn(1));
    show("pdo[$mode] fetch end", $st->fetch());
    $q = $db->query('SELECT v FROM t ORDER BY id', PDO::FETCH_COLUMN, 0);
    show("pdo[$mode] fetchAll", $q->fetchAll());
    show("pdo[$mode] fetchObject", $db->query('SELECT v FROM t')->fetchObject());
    $st2 = $db->prepare('SELECT v FROM t WHERE id = ?');
    $id = 3;
    $st2->bindParam(1, $id, PDO::PARAM_INT);
    show("pdo[$mode] bound execute", $st2->execute());
    show("pdo[$mode] bound fetch", $st2->fetchAll(mode: PDO::FETCH_NUM));
    show("pdo[$mode] errorInfo", $db->errorInfo()[0]);
}

// mysqli, with and without exceptions.
foreach ([MYSQLI_REPORT_OFF, MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT] as $report) {
    mysqli_report($report);
    $m = new mysqli('127.0.0.1', 'root', '', 'test', 3306);
    attempt("mysqli[$report] query", fn () => $m->query('SELECT 1 AS one')->fetch_assoc());
    attempt("mysqli[$report] bad", fn () => $m->query('SELECT * FROM no_such_table_sonde'));
    attempt("mysqli[$report] real_query", fn () => mysqli_real_query($m, 'SELECT 2'));
    attempt("mysqli[$report] store", fn () => mysqli_fetch_row(mysqli_store_result($m)));
    $st = $m->prepare('SELECT ? + 1');
    $n = 41;
    $st->bind_param('i', $n);
    show("mysqli[$report] execute", $st->execute());
    $out = null;
    $st->bind_result($out);
    show("mysqli[$report] stmt fetch", $st->fetch());
    show("mysqli[$report] bound out", $out);
    $st->close();
    show("mysqli[$report] fetch_all", mysqli_query($m, 'SELECT 1 UNION SELECT 2')->fetch_all());
    show("mysqli[$report] execute_query", mysqli_execute_query($m, 'SELECT ? AS x', ['y'])->fetch_column());
}
mysqli_report(MYSQLI_REPORT_OFF);

// pgsql, including failures (warnings, silenced).
$pg = pg_connect('host=127.0.0.1 port=5432 dbname=test user=postgres');
show('pg query', pg_fetch_all(pg_query($pg, 'SELECT 1 AS a UNION SELECT 2 ORDER BY 1')));
show('pg params', pg_fetch_row(pg_query_params($pg, 'SELECT $1::text', ['x'])));
show('pg bad', @pg_query($pg, 'SELECT * FROM no_such_table_sonde'));
show('pg prepare', (bool)pg_prepare($pg, 'q1', 'SELECT $1::int * 2'));
show('pg execute', pg_fetch_result(pg_execute($pg, 'q1', [21]), 0, 0));

// curl: the app's own headers, return transfer, errors.
$ch = curl_init('file:///etc/hostname');
curl_setopt_array($ch, [CURLOPT_RETURNTRANSFER => true, CURLOPT_HTTPHEADER => ['X-A: 1']]);
show('curl file', strlen((string)curl_exec($ch)) > 0);
show('curl errno', curl_errno($ch));
$bad = curl_init('http://127.0.0.1:1/');
curl_setopt($bad, CURLOPT_RETURNTRANSFER, true);
show('curl refused', curl_exec($bad));
show('curl refused errno', curl_errno($bad));

// PHP streams: local files and a refused HTTP URL.
show('fgc local', strlen(file_get_contents(__FILE__)) > 0);
show('fopen local', is_resource(fopen(__FILE__, 'r')));
show('fgc refused', @file_get_contents('http://127.0.0.1:1/'));

// Redis.
$r = new Redis();
show('redis connect', $r->connect('127.0.0.1', 6379));
$k = 'sonde:behaviour:' . getmypid();
show('redis set', $r->set($k, 'v'));
show('redis get', $r->get($k));
show('redis missing', $r->get("$k:none"));
show('redis del', $r->del($k));

// Exceptions through user code, caught and uncaught in a nested function.
function thrower(): never
{
    throw new LogicException('inner');
}
attempt('exception', fn () => thrower());
echo "done\n";
