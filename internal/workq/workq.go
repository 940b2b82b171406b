// Package workq hands work from any goroutine to the one goroutine that
// owns a piece of state, in order.
//
// Push never blocks: the producers are broker callbacks, paho's dispatcher
// and the control loop, which must never wait for the consumer, and some
// of them are called from inside the consumer's own work (the embedded
// broker delivers the fleet's own publishes synchronously), where a
// bounded channel would deadlock the consumer on itself. The consumer
// waits on Wake and takes everything queued with Drain.
package workq

import "sync"

// Queue is an unbounded FIFO with a wake-up signal. The zero value is not
// usable: call New.
type Queue[T any] struct {
	mu     sync.Mutex
	items  []T
	closed bool
	wake   chan struct{} // holds one token while items is non-empty
}

// New returns an empty, open queue.
func New[T any]() *Queue[T] { return &Queue[T]{wake: make(chan struct{}, 1)} }

// Push queues v; it reports false, and drops v, once the queue is closed.
func (q *Queue[T]) Push(v T) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// Wake receives a token after a Push; the consumer then calls Drain. A
// token may find the queue already drained.
func (q *Queue[T]) Wake() <-chan struct{} { return q.wake }

// Drain takes every queued item, oldest first.
func (q *Queue[T]) Drain() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

// Close refuses later pushes and drops what is queued.
func (q *Queue[T]) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.items = nil
}
