// Package aedes holds the node aedes broker of brokers/aedes (server.js,
// package.json and its lock file) and the Go test that runs it with real
// certificates. There is no Go code to import here: the mean-time-to-recover
// harness starts the broker as
//
//	node brokers/aedes/server.js --port P --ca FILE --cert FILE --key FILE [--host 127.0.0.1] [--topic-root thermo]
//	    [--redis redis://HOST:PORT/DB [--id NODE]]
//
// With --redis, nodes sharing one Redis are one broker cluster (the tests
// here and e2e's TestAedesClusterFailover run three).
//
// after `npm ci` in brokers/aedes, and waits for the line "aedes ready port=P"
// on its standard output.
package aedes
