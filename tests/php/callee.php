<?php
// Echoes the headers a caller sent: its X-App, and whether it received
// exactly one well-formed W3C traceparent.
declare(strict_types=1);
header('Content-Type: text/plain');
$h = array_change_key_case(getallheaders(), CASE_LOWER);
$tp = preg_match('/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/', $h['traceparent'] ?? '') === 1;
echo 'x-app=', $h['x-app'] ?? '-', ' traceparent=', $tp ? 'yes' : 'no';
