// Package protocol is the thermostat sync contract of PROTOCOL.md, version 1,
// as plain types and functions with no I/O: the two-entry vector clock, the
// per-property write stamps and their merge rule, the wire codec with its
// validation, the topic layout, and the device and controller state machines
// that decide when a message is sent.
//
// Both the firmware and the controller import this package, so the rules
// exist exactly once. Everything here is deterministic and safe to drive from
// tests and simulations; the callers own persistence and the network.
package protocol
