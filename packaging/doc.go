// Package packaging is the release side of the repository: the maintainer
// scripts both .deb packages run (postinst, prerm, postrm: shared, keyed on
// $DPKG_MAINTSCRIPT_PACKAGE), and the tests that build the release with
// the repository's .goreleaser.yaml and check what a hobbyist gets:
//
//   - the armv6 and arm64 thermostat binaries run under qemu-user (the Pi
//     Zero's ARM1176 CPU for armv6), print their version, and connect to a
//     real Mosquitto with --hal sim and send an event (qemu_test.go);
//   - the .debs' file lists, modes, control fields and maintainer scripts,
//     the archives and checksums, and the layout of an install into a
//     throwaway root (deb_test.go);
//   - install, upgrade to a newer version, remove and purge with dpkg in a
//     throwaway root: the upgrade keeps the edited config, the state
//     directory, the device key and the clock, and restarts the service
//     once (upgrade_test.go).
//
// The goreleaser-based tests build two snapshot releases (two versions) in
// a temporary copy of the repository; they are skipped with -short.
package packaging
