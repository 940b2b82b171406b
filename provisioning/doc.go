// Package provisioning is the fleet's small public-key infrastructure: one
// certificate authority, the broker's server certificate, a client
// certificate per device (CN = device id) and one for the controller
// (CN = "controller"), signing of requests made on the device so its key
// never leaves the board, and a Mosquitto configuration for that PKI.
//
// Every client is identified by its certificate's Common Name (see
// PROTOCOL.md), so the checks on that name live here, next to the code that
// writes it. Only the standard library's crypto is used; keys are ECDSA P-256.
// Private keys are written 0600 and every file is replaced atomically, so a
// crash never leaves a half-written key or a certificate without its key.
//
// RunPKI and RunCSR are the command lines `controllerlite pki ...` and
// `thermostat csr`; the binaries' main packages dispatch to them.
package provisioning
