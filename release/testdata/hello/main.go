// Command hello is a tiny binary for release's tests: Describe asks it its
// version, as it asks a thermostat.
package main

import (
	"fmt"
	"os"
)

var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Printf("hello %s (commit x)\n", version)
	}
}
