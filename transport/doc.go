// Package transport connects a thermostat or the controller to an MQTT
// 3.1.1 broker with paho.mqtt.golang over mutual TLS, and keeps it connected.
// (The controller's bridge to Home Assistant uses it too, for a broker
// outside the fleet that knows it by password: Options.Username, TLS and
// AllowPlain; the fleet's own links never set those.)
//
// It exists because paho's own recovery is slow where it matters most for a
// fleet: its reconnect backoff doubles up to ten minutes and is remembered
// across outages, and a broker that hangs with its sockets open is noticed
// only after keep-alive plus the ping timeout, on a five-second tick. Here
// reconnects use a short, capped, jittered backoff that restarts at every
// outage, and a liveness monitor on the connection probes a silent broker
// after half the keep-alive and drops it after a full one.
//
// Two failures that reconnecting cannot cure are told apart from the ones
// it can, and reported through Options.OnTrouble so that a person hears of
// them: a session taken over again and again by another client with the
// same certificate (a cloned SD card), after which the client backs off to
// minutes instead of fighting at full speed, and a TLS handshake refused
// on every attempt. A failure that persists is logged at WARN once a
// minute with the number of attempts since (internal/lograte), neither
// once and then never, nor on every attempt.
//
// Messages and connection events are handed to the caller in order on one
// goroutine of their own, so a handler may block, persist state and publish
// without stalling paho's reader (which with OrderMatters would otherwise
// wait for the handler and miss its ping responses).
package transport
