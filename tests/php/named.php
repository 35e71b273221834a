<?php
// Names the transaction from ?name= (the console test's CSV export check).
declare(strict_types=1);
header('Content-Type: text/plain');
sonde_set_transaction_name((string)($_GET['name'] ?? 'named'));
echo "ok\n";
