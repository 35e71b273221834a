<?php
// Echoes the headers a caller sent.
declare(strict_types=1);
header('Content-Type: text/plain');
$h = array_change_key_case(getallheaders(), CASE_LOWER);
echo 'x-app=', $h['x-app'] ?? '-', ' traceparent=', isset($h['traceparent']) ? 'yes' : 'no';
