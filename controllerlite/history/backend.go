package history

// backend is where a History keeps its samples and buckets: a bbolt file
// of its own (Open, bolt.go) or the controller's PostgreSQL database
// (OpenPostgres, pg.go). The rules (what a sample is, how compaction
// folds samples into buckets, how a query adds them up) are History's,
// in one place; a backend only stores and reads, each device's work in
// one transaction. History serializes the calls that write (write,
// remove, compactNext).
type backend interface {
	// write stores samples. A sample older than what its device has
	// compacted has no place left and is skipped; two of one device in
	// one millisecond: the later takes the next free millisecond.
	write(batch []sample) error
	// remove deletes a device's whole history; an unknown id is no error.
	remove(id string) error
	// compactNext compacts, in one transaction, the first n devices
	// after after (in id order) that are due at cutoff, and returns the
	// last one's id, "" when none was left (on an error, the one that
	// failed). For each device: when it was compacted before cutoff (unix
	// s), it reads its raw samples before cutoff and the time of the
	// first one at or after it (-1: none), stores the buckets fold
	// returns, deletes those samples but the one fold keeps, and records
	// cutoff; then it deletes buckets and raw samples before expire (unix
	// s), and the device when nothing is left.
	compactNext(after string, n int, cutoff, expire int64, fold foldFunc) (string, error)
	// read returns what a query of [startMs, toMs) needs (stored).
	read(id string, startMs, toMs int64) (stored, error)
	close() error
}

// foldFunc turns a device's raw samples before the cut (ss, in time
// order; next is the time of the first one at or after the cut, or -1)
// into buckets by start (unix ms), given how far (unix s) it had been
// compacted, and names the sample to keep raw (-1: none).
type foldFunc func(done int64, ss []sample, next int64) (accs map[int64]*acc, keep int)

// stored is what a backend reads for a query of a device over [start, to).
type stored struct {
	// doneMs is how far the device has been compacted (unix ms): before
	// it the buckets answer, after it the raw samples.
	doneMs int64
	// buckets are the stored buckets starting in [start, min(doneMs, to)),
	// in time order.
	buckets []timedAcc
	// raw, when max(start, doneMs) < to: the last sample before that
	// time (its outputs hold into the range), the samples in the range,
	// and the first at or after to (it ends the last one's time), in
	// time order.
	raw []sample
}

// timedAcc is a stored bucket and its start (unix ms).
type timedAcc struct {
	ms int64
	a  acc
}
