<?php
// A SOAP service (non-WSDL) for the SoapClient tests: add() answers, fail()
// answers with a SOAP fault.
declare(strict_types=1);

class SondeSoapService
{
    public function add(int $a, int $b): int
    {
        return $a + $b;
    }

    public function fail(): void
    {
        throw new SoapFault('Server', 'the service failed');
    }
}

$server = new SoapServer(null, ['uri' => 'urn:sonde']);
$server->setClass(SondeSoapService::class);
$server->handle();
