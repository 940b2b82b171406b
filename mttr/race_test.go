//go:build race

package main

// raceBuild: the test binary runs under the race detector (make test's
// go test -race), which makes every device several times slower and
// bigger; TestThousandReturn plays fewer devices then.
const raceBuild = true
