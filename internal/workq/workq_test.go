package workq

import (
	"slices"
	"sync"
	"testing"
)

func TestOrderWakeAndClose(t *testing.T) {
	q := New[int]()
	select {
	case <-q.Wake():
		t.Fatal("a token before any push")
	default:
	}
	for i := range 3 {
		if !q.Push(i) {
			t.Fatal("push refused on an open queue")
		}
	}
	<-q.Wake() // one token for the three pushes
	select {
	case <-q.Wake():
		t.Fatal("more than one token")
	default:
	}
	if got := q.Drain(); !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("drained %v", got)
	}
	if got := q.Drain(); got != nil {
		t.Fatalf("second drain %v", got)
	}
	q.Push(7)
	q.Close()
	if q.Push(8) || q.Drain() != nil {
		t.Fatal("a closed queue took or kept items")
	}
}

// Concurrent producers never block and nothing is lost or reordered per
// producer.
func TestConcurrentProducers(t *testing.T) {
	q := New[[2]int]()
	const producers, each = 4, 1000
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				q.Push([2]int{p, i})
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	next := make([]int, producers)
	got := 0
	for got < producers*each {
		select {
		case <-q.Wake():
		case <-done:
		}
		for _, v := range q.Drain() {
			if v[1] != next[v[0]] {
				t.Fatalf("producer %d: got %d, want %d", v[0], v[1], next[v[0]])
			}
			next[v[0]]++
			got++
		}
	}
}
