package store

import (
	"fmt"
	"syscall"
)

// releaseMapped drops the mapping's resident pages: MADV_DONTNEED on a
// shared file mapping unmaps them and keeps their data in the page cache.
func releaseMapped(addr, size uintptr, path string) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, addr, size, syscall.MADV_DONTNEED); errno != 0 {
		return fmt.Errorf("release the mapped pages of %s: %w", path, errno)
	}
	return nil
}
