package brokerctl

import "syscall"

// syscallZero is signal 0: it checks that a process exists.
const syscallZero = syscall.Signal(0)
