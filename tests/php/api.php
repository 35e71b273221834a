<?php
// The extension's PHP API, for the end-to-end test.
declare(strict_types=1);
header('Content-Type: text/plain');
if (isset($_GET['ignore'])) {
    var_dump(sonde_ignore_transaction());
    exit;
}
var_dump(sonde_set_transaction_name('checkout/confirm'));
var_dump(sonde_add_attribute('user_tier', 'gold'));
var_dump(sonde_add_attribute('cart_items', 3));
try {
    throw new DomainException('coupon expired');
} catch (DomainException $e) {
    var_dump(sonde_record_error($e));
}
try {
    sonde_record_error('not an exception');
} catch (TypeError $e) {
    echo "TypeError\n";
}
