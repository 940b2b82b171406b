package fleet

import (
	"context"
	"sync"
)

// queue is an unbounded FIFO of work for the Run goroutine. push never
// blocks: the embedded broker calls Receive on its clients' goroutines, and
// synchronously from inside the fleet's own publishes (the controller is
// subscribed to its own command topics), so a bounded channel could
// deadlock the loop on itself.
type queue struct {
	mu     sync.Mutex
	items  []func(context.Context)
	notify chan struct{} // one token while items is non-empty
}

func newQueue() *queue { return &queue{notify: make(chan struct{}, 1)} }

func (q *queue) push(fn func(context.Context)) {
	q.mu.Lock()
	q.items = append(q.items, fn)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// drain takes every queued item.
func (q *queue) drain() []func(context.Context) {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}
