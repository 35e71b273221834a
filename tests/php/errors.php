<?php
// Failures of every kind, for the end-to-end error capture test.
declare(strict_types=1);

class DemoFailure extends RuntimeException {}

switch ($_GET['case'] ?? '') {
    case 'uncaught':
        throw new DemoFailure('the demo failed');
    case 'caught500':
        // A framework catches the exception and answers 500 itself.
        try {
            throw new LogicException('handled but fatal for the response');
        } catch (LogicException $e) {
            http_response_code(500);
            echo "sorry\n";
        }
        break;
    case 'fatal':
        ini_set('memory_limit', '8M');
        $s = str_repeat('x', 64 * 1024 * 1024);
        echo strlen($s);
        break;
    case 'warning':
        // Two warnings and a deprecation: counted, not failures.
        $a = [];
        echo $a['missing'] ?? 'none', "\n";
        echo $undefinedVariable, "\n";
        echo $a['also-missing'], "\n";
        echo "ok\n";
        break;
}
