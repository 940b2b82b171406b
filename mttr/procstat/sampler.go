package procstat

import (
	"sync"
	"time"
)

// Target is a process to sample: PID returns the one running now, 0 when
// none is (a broker killed and not back yet), so that a restarted process
// is followed.
type Target struct {
	// Name says which process ("harness", "broker", "controller");
	// Role what it is running.
	Name, Role string
	PID        func() int
	// Child says the process is started after the target is added (the
	// harness's broker and controller): its first reading counts all
	// its CPU time, from the tick before (Sample.Since).
	Child bool
}

// Sampler reads its targets every interval, all in the same tick, until
// Stop.
type Sampler struct {
	interval time.Duration
	stop     chan struct{}
	done     chan struct{}

	mu       sync.Mutex
	targets  []Target
	series   []Series
	stopped  bool
	lastTick time.Time // when the previous tick began, or the start
}

// Start samples targets (more can be added) every interval, from now.
func Start(interval time.Duration, targets ...Target) *Sampler {
	s := &Sampler{interval: interval, stop: make(chan struct{}), done: make(chan struct{}), lastTick: time.Now()}
	for _, t := range targets {
		s.Add(t)
	}
	go s.loop()
	return s
}

// Add samples one more process from the next tick on.
func (s *Sampler) Add(t Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.targets = append(s.targets, t)
	s.series = append(s.series, nil)
}

func (s *Sampler) loop() {
	defer close(s.done)
	s.tick()
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.tick()
		}
	}
}

// tick reads every target once. A target not running, or gone between
// its PID and the read, gives no sample.
func (s *Sampler) tick() {
	now := time.Now()
	s.mu.Lock()
	targets, since := s.targets, s.lastTick
	s.mu.Unlock()
	got := make([]*Sample, len(targets))
	for i, t := range targets {
		pid := t.PID()
		if pid <= 0 {
			continue
		}
		if x, err := Read(pid); err == nil {
			got[i] = &x
		}
	}
	s.mu.Lock()
	for i, x := range got {
		if x == nil {
			continue
		}
		if ser := s.series[i]; targets[i].Child && (len(ser) == 0 || ser[len(ser)-1].PID != x.PID) {
			x.Since = since // first reading of the process, or of its restart
		}
		s.series[i] = append(s.series[i], *x)
	}
	s.lastTick = now
	s.mu.Unlock()
}

// Stop takes a last sample, ends the sampling and returns the targets and
// their samples, in the order they were added. It may be called more than
// once.
func (s *Sampler) Stop() ([]Target, []Series) {
	s.mu.Lock()
	first := !s.stopped
	s.stopped = true
	s.mu.Unlock()
	if first {
		close(s.stop)
		<-s.done
		s.tick()
	}
	return s.Snapshot()
}

// Snapshot returns the targets and their samples so far.
func (s *Sampler) Snapshot() ([]Target, []Series) {
	s.mu.Lock()
	defer s.mu.Unlock()
	series := make([]Series, len(s.series))
	for i, x := range s.series {
		series[i] = append(Series(nil), x...)
	}
	return append([]Target(nil), s.targets...), series
}
