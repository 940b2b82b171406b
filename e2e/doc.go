// Package e2e holds the end-to-end tests of the whole product: thermostats
// (firmware/runner in process, or the thermostat binary where a process
// boundary matters), controllerlite (controllerlite/server in process, or
// its binary), real mutual TLS with certificates issued by the test, and
// two brokers: the broker controllerlite embeds, and a real Mosquitto
// started by the test with the configuration provisioning generates, which
// controllerlite then reaches with --broker.
//
// Every scenario runs against both brokers: the worked example of
// PROTOCOL.md played over the wire with the messages held in flight so the
// conflict really happens; commands and local changes made while a side is
// offline; rejoining after lost state (device, broker, controller); clients
// the brokers must refuse and brokers the clients must refuse; a device
// certificate trying to exhaust the controllerlite binary's broker
// (oversize packets, topics outside the contract, connections without
// CONNECT); two boards on one certificate (a cloned card), which back off
// and say so on both sides, and broker restarts, which are never taken for
// that; an expired certificate, logged once a minute on both sides rather
// than on every attempt; bad input, which is rejected with a logged reason
// and changes nothing; and an installer's mistakes (certificates of the wrong kind or
// fleet, a corrupt store), which the binaries refuse at start, before
// writing anything.
//
// The package has no code of its own besides this comment: it is tests.
package e2e
