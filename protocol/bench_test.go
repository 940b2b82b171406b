package protocol

import "testing"

// A device's Event with every property a board sends after a connect: what
// the controller decodes for each returning device.
var benchEvent = []byte(`{"v":1,"vc":[12,40],"src":"local","props":{` +
	`"setpoint_c":{"val":21.5,"w":[12,39]},"mode":{"val":"heat","w":[3,40]},` +
	`"preset":{"val":"none","w":[0,38]}}}`)

// BenchmarkDecodeMessage: the CPU and allocations of decoding one Event
// (go test -run X -bench DecodeMessage -benchmem ./protocol).
func BenchmarkDecodeMessage(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := DecodeMessage(benchEvent); err != nil {
			b.Fatal(err)
		}
	}
}
