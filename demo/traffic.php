<?php
// Steady demo traffic against the sample API: a mix of reads, sign-ins,
// likes and votes, a slow page now and then, and the odd failure.
// Usage: php demo/traffic.php http://127.0.0.1:8080 [requests-per-second]
declare(strict_types=1);

$base = rtrim($argv[1] ?? 'http://127.0.0.1:8080', '/');
$rps = max(1, (int)($argv[2] ?? 20));
$langs = ['ko', 'en', 'ja', 'zh'];

function call(string $method, string $url, ?array $json = null): int
{
    $opts = ['http' => ['method' => $method, 'ignore_errors' => true, 'timeout' => 15]];
    if ($json !== null) {
        $opts['http']['header'] = "Content-Type: application/json\r\n";
        $opts['http']['content'] = json_encode($json);
    }
    @file_get_contents($url, false, stream_context_create($opts));
    $status = 0;
    foreach ($http_response_header ?? [] as $h) {
        if (preg_match('#^HTTP/\S+ (\d{3})#', $h, $m)) {
            $status = (int)$m[1];
        }
    }
    return $status;
}

$n = 0;
while (true) {
    $t = microtime(true);
    $lang = $langs[array_rand($langs)];
    $i = random_int(1, 50);
    $hash = substr(sha1("$lang-$i"), 0, 20);
    $r = random_int(1, 100);
    if ($r <= 40) {
        call('GET', "$base/api/v6/photos?lang=$lang&page=" . random_int(1, 3));
    } elseif ($r <= 65) {
        call('GET', "$base/api/v6/photos/$hash");
    } elseif ($r <= 75) {
        $u = random_int(1, 20);
        call('POST', "$base/api/v6/signin", ['user' => "fan$u", 'password' => random_int(0, 9) ? "pw$u" : 'wrong']);
    } elseif ($r <= 88) {
        call('POST', "$base/api/v6/photos/$hash/like");
    } elseif ($r <= 96) {
        call('POST', "$base/api/v6/votes", ['user_id' => random_int(1, 20), 'photo_id' => random_int(1, 200), 'score' => random_int(1, 5)]);
    } elseif ($r <= 99) {
        call('GET', "$base/api/v6/slow?ms=" . random_int(200, 1500));
    } else {
        call('GET', "$base/api/v6/boom");
    }
    $n++;
    $sleep = 1.0 / $rps - (microtime(true) - $t);
    if ($sleep > 0) {
        usleep((int)($sleep * 1e6));
    }
}
