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
$copy = curl_copy_handle($ch);
show('curl copy', strlen((string)curl_exec($copy)) > 0);
curl_reset($copy);
show('curl reset', curl_exec($copy));
$bad = curl_init('http://127.0.0.1:1/');
curl_setopt($bad, CURLOPT_RETURNTRANSFER, true);
show('curl refused', curl_exec($bad));
show('curl refused errno', curl_errno($bad));

// PHP streams: local files and a refused HTTP URL.
show('fgc local', strlen(file_get_contents(__FILE__)) > 0);
show('fopen local', is_resource(fopen(__FILE__, 'r')));
show('fgc refused', @file_get_contents('http://127.0.0.1:1/'));
show('fgc http', @file_get_contents(getenv('SONDE_SOAP_URL')));
show('fgc http 404', @file_get_contents(dirname(getenv('SONDE_SOAP_URL')) . '/no_such_page.php'));
$fh = fopen(getenv('SONDE_SOAP_URL'), 'r', false, stream_context_create(['http' => ['ignore_errors' => true]]));
show('fopen http meta', array_intersect_key(stream_get_meta_data($fh), ['wrapper_type' => 1, 'stream_type' => 1, 'mode' => 1]));
show('fopen http headers', is_array(stream_get_meta_data($fh)['wrapper_data']));
fclose($fh);
show('stream wrappers', in_array('https', stream_get_wrappers(), true) && in_array('http', stream_get_wrappers(), true));
show('http_response_header', isset($http_response_header) ? count($http_response_header) > 0 : 'unset');

// Redis.
$r = new Redis();
show('redis connect', $r->connect('127.0.0.1', 6379));
$k = 'sonde:behaviour:' . getmypid();
show('redis set', $r->set($k, 'v'));
show('redis get', $r->get($k));
show('redis missing', $r->get("$k:none"));
show('redis del', $r->del($k));

// Memcached (the test's server on SONDE_MEMCACHED_PORT): hits, misses,
// failures, result codes read by the app itself, persistent ids.
$mc = new Memcached('sonde-behaviour');
if (!$mc->getServerList()) {
    $mc->addServer('127.0.0.1', (int)getenv('SONDE_MEMCACHED_PORT'));
}
$mk = 'sonde:behaviour:' . getmypid();
show('memcached set', $mc->set($mk, ['a' => 1]));
show('memcached get', $mc->get($mk));
show('memcached code', $mc->getResultCode());
show('memcached miss', $mc->get("$mk:none"));
show('memcached miss code', $mc->getResultCode());
show('memcached miss message', $mc->getResultMessage());
show('memcached add existing', $mc->add($mk, 'x'));
show('memcached add code', $mc->getResultCode());
show('memcached increment non-numeric', $mc->increment($mk));
show('memcached increment code', $mc->getResultCode());
show('memcached setMulti', $mc->setMulti(["$mk:1" => 1, "$mk:2" => 2]));
show('memcached getMulti', array_values($mc->getMulti(["$mk:1", "$mk:2", "$mk:3"])));
show('memcached increment', $mc->increment("$mk:1", 5));
show('memcached deleteMulti', array_values($mc->deleteMulti(["$mk:1", "$mk:2"])));
show('memcached delete', $mc->delete($mk));
show('memcached servers', count($mc->getServerList()));
$dead = new Memcached();
$dead->addServer('127.0.0.1', 1);
show('memcached dead get', $dead->get($mk));
show('memcached dead code', $dead->getResultCode());
attempt('memcached no constructor', fn () => (new ReflectionClass(Memcached::class))->newInstanceWithoutConstructor()->get('x'));

// SoapClient against the test's SOAP service (SONDE_SOAP_URL): answers,
// faults thrown and returned, traced headers, named arguments, a subclass
// overriding __doRequest, a refused connection.
$soapUrl = getenv('SONDE_SOAP_URL');
$sc = new SoapClient(null, ['location' => $soapUrl, 'uri' => 'urn:sonde', 'trace' => true]);
show('soap add', $sc->add(2, 3));
show('soap __soapCall', $sc->__soapCall('add', [4, 5]));
show('soap last response has envelope', str_contains((string)$sc->__getLastResponse(), 'Envelope'));
show('soap last headers status', strtok((string)$sc->__getLastResponseHeaders(), "\r\n"));
attempt('soap fault', fn () => $sc->fail());
$quiet = new SoapClient(null, ['location' => $soapUrl, 'uri' => 'urn:sonde', 'exceptions' => false]);
$qf = $quiet->fail();
show('soap returned fault', [get_class($qf), $qf->faultcode, $qf->faultstring]);
show('soap __soap_fault', isset($quiet->__soap_fault) ? get_class($quiet->__soap_fault) : null);
class SondeLoggingClient extends SoapClient
{
    public array $seen = [];

    public function __doRequest(string $request, string $location, string $action, int $version, bool $oneWay = false): ?string
    {
        $this->seen[] = $action;
        return parent::__doRequest($request, $location, $action, $version, $oneWay);
    }
}
$lc = new SondeLoggingClient(null, ['location' => $soapUrl, 'uri' => 'urn:sonde']);
show('soap subclass', $lc->add(a: 7, b: 8));
show('soap subclass saw', $lc->seen);
$refused = new SoapClient(null, ['location' => 'http://127.0.0.1:1/soap', 'uri' => 'urn:sonde']);
attempt('soap refused', fn () => $refused->add(1, 2));
$refusedQuiet = new SoapClient(null, ['location' => 'http://127.0.0.1:1/soap', 'uri' => 'urn:sonde', 'exceptions' => false]);
show('soap refused quiet', get_class($refusedQuiet->add(1, 2)));

// Exceptions through user code, caught and uncaught in a nested function.
function thrower(): never
{
    throw new LogicException('inner');
}
attempt('exception', fn () => thrower());
echo "done\n";
