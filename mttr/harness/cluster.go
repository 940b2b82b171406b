package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/lease"
	"github.com/thermofleet/thermo/internal/holdproxy"
	"github.com/thermofleet/thermo/internal/pgcluster"
	"github.com/thermofleet/thermo/mttr/brokerctl"
	"github.com/thermofleet/thermo/mttr/report"
	"github.com/thermofleet/thermo/mttr/stats"
	"github.com/thermofleet/thermo/protocol"
)

// The cluster (--broker aedes-cluster): what issue 16 runs past one
// machine, on this one. Three aedes nodes share one Redis (brokers/aedes
// --redis); several `controllerlite serve --broker ... --store
// postgres://...` instances, each with its own certificate (CN
// controller-NAME), share one PostgreSQL, each reaching it through a proxy
// of its own that can hold its traffic (a partition between that instance
// and the database); the devices are spread over the nodes, each given
// every node's address to fail over to. The harness reads the fleet from
// every live instance (the freshest record of each device wins) and sends
// its remote writes to the instances in turn, so most land on an instance
// that does not own the device.
//
// Its faults, one part at a time (the cycle's "broker down" is the fault's
// length, --keep-dead; recovery is measured from the part's return, and
// the failover itself from the fault):
//   - kill-instance: SIGKILL of one instance; its devices move to the
//     others within two leases (takeover, measured);
//   - kill-node: SIGKILL of one broker node; its devices connect to the
//     next node of their list (failover, measured per device);
//   - restart-postgres: PostgreSQL stopped as a crash would (pg_ctl stop
//     -m immediate) and started again; the instances wait and resume, and
//     a write they acknowledged is never lost;
//   - partition-postgres: one instance's database traffic held; it stops
//     acting before its lease ends, and the others take its devices only
//     after (two owners never act at once; measured).

// Cluster fault modes and broker.
const (
	FaultKillInstance      = "kill-instance"
	FaultKillNode          = "kill-node"
	FaultRestartPostgres   = "restart-postgres"
	FaultPartitionPostgres = "partition-postgres"

	BrokerAedesCluster = "aedes-cluster"
)

// clusterFaults are the fault modes of the cluster, which plays no other.
var clusterFaults = []string{FaultKillInstance, FaultKillNode, FaultRestartPostgres, FaultPartitionPostgres}

// DefaultLease is the instances' lease in a cluster run: short, so that a
// run measures takeovers in seconds (serve's default is longer).
const DefaultLease = 3 * time.Second

// RedisBinary is where Debian installs Redis.
const RedisBinary = "/usr/bin/redis-server"

// cluster is the running cluster.
type cluster struct {
	redis     *brokerctl.Process
	nodes     []*brokerctl.Process
	nodeURLs  []string
	pgDir     string
	pg        *pgcluster.Cluster
	proxies   []*holdproxy.Proxy
	instances []*brokerctl.Process
	names     []string
	apis      []*api.Client

	mu   sync.Mutex
	down map[int]bool // instances killed and not back

	next    atomic.Uint64 // the instance the next write goes to
	retried atomic.Int64  // writes retried on another instance
	slots   chan struct{} // writes in flight (remoteWrites)
}

// startCluster starts Redis, the broker nodes, PostgreSQL and the
// controller instances, and returns the node URLs the devices dial.
func (r *run) startCluster(ctx context.Context) (*cluster, error) {
	cfg := r.cfg
	c := &cluster{down: map[int]bool{}, slots: make(chan struct{}, remoteWrites)}
	// Stopped by teardown, whatever starts.
	r.cl = c

	// Redis.
	bin := RedisBinary
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("redis-server"); err != nil {
			return nil, errors.New("--broker aedes-cluster needs redis-server (apt-get install redis-server)")
		}
	}
	rport, err := brokerctl.FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	rdir := filepath.Join(cfg.WorkDir, "redis")
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		return nil, err
	}
	c.redis = &brokerctl.Process{Kind: "redis", Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(rport)),
		Argv:    []string{bin, "--port", strconv.Itoa(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", rdir},
		LogFile: filepath.Join(rdir, "redis.log")}
	r.out.status("starting redis")
	r.watchProcess("redis", "redis-server: the nodes' shared state", c.redis)
	if _, err := startPart(ctx, c.redis); err != nil {
		return nil, err
	}
	redisURL := "redis://" + c.redis.Address + "/0"

	// The broker nodes.
	for i := range cfg.Nodes {
		id := fmt.Sprintf("n%d", i+1)
		port, err := brokerctl.FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		p, err := brokerctl.Aedes(cfg.AedesDir, brokerctl.Options{Dir: filepath.Join(cfg.WorkDir, "aedes-"+id), Host: "127.0.0.1", Port: port,
			CAFile: r.pki.caFile, CertFile: r.pki.serverCert, KeyFile: r.pki.serverKey})
		if err != nil {
			return nil, err
		}
		p.Kind = "node " + id
		p.Argv = append(p.Argv, "--redis", redisURL, "--id", id)
		r.out.status("starting broker node %s", id)
		r.watchProcess("node "+id, "aedes (node) on redis", p)
		if _, err := startPart(ctx, p); err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, p)
		c.nodeURLs = append(c.nodeURLs, "mqtts://"+p.Address)
	}

	// PostgreSQL, in a directory of its own outside the work directory:
	// run as root, the server runs as another user, who must reach it.
	if c.pgDir, err = os.MkdirTemp("", "mttr-postgres-"); err != nil {
		return nil, err
	}
	pport, err := brokerctl.FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	r.out.status("starting postgresql")
	if c.pg, err = pgcluster.Init(c.pgDir, pport); err != nil {
		return nil, err
	}
	if err := c.pg.Start(); err != nil {
		return nil, err
	}
	dbURL, err := c.pg.CreateDB("thermo")
	if err != nil {
		return nil, err
	}

	// The instances, each through its own proxy to the database, each
	// starting at another node (so the instances' own connections are
	// spread too).
	for i := range cfg.Instances {
		name := string(rune('a' + i))
		px, err := holdproxy.Listen("127.0.0.1:0", c.pg.Addr())
		if err != nil {
			return nil, err
		}
		c.proxies = append(c.proxies, px)
		cert, key, err := r.pki.client(protocol.ControllerPrefix + name)
		if err != nil {
			return nil, err
		}
		hport, err := brokerctl.FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hport))
		store, err := proxiedURL(dbURL, px.Addr().String())
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(cfg.WorkDir, "instance-"+name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		args := append(slices.Clone(cfg.EmbeddedCmd), "--ca", r.pki.caFile, "--cert", cert, "--key", key,
			"--data-dir", filepath.Join(dir, "data"), "--http", httpAddr, "--http-token-file", r.pki.tokenFile,
			"--store", store, "--lease", cfg.Lease.String(), "--keep-alive", cfg.KeepAlive.String())
		for j := range c.nodeURLs {
			args = append(args, "--broker", c.nodeURLs[(i+j)%len(c.nodeURLs)])
		}
		p := &brokerctl.Process{Kind: "instance " + name, Argv: args, Address: httpAddr, LogFile: filepath.Join(dir, "controllerlite.log")}
		r.out.status("starting controller instance %s", name)
		r.watchProcess("instance "+name, "controllerlite serve --broker --store postgres", p)
		if _, err := startPart(ctx, p); err != nil {
			return nil, err
		}
		cl, err := api.NewClient(httpAddr, r.pki.token)
		if err != nil {
			return nil, err
		}
		c.instances = append(c.instances, p)
		c.names = append(c.names, name)
		c.apis = append(c.apis, cl)
	}
	return c, nil
}

// proxiedURL is dbURL with its host replaced by addr.
func proxiedURL(dbURL, addr string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	u.Host = addr
	return u.String(), nil
}

// readLeaseEnd reads when instance name's lease ends, from the table
// package pgstore keeps the leases in.
func readLeaseEnd(ctx context.Context, dbURL, name string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return time.Time{}, err
	}
	defer conn.Close(ctx)
	var end time.Time
	err = conn.QueryRow(ctx, `SELECT expires_at FROM controllers WHERE name = $1`, name).Scan(&end)
	return end, err
}

// startPart starts one part of the cluster, bounded.
func startPart(ctx context.Context, p *brokerctl.Process) (time.Time, error) {
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return p.Start(sctx)
}

// stop ends every part of the cluster.
func (c *cluster) stop() {
	var wg sync.WaitGroup
	for _, p := range c.instances {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
	for _, px := range c.proxies {
		px.Close()
	}
	for _, p := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop() }()
	}
	wg.Wait()
	if c.redis != nil {
		c.redis.Stop()
	}
	if c.pg != nil {
		c.pg.Stop("immediate")
	}
	if c.pgDir != "" {
		os.RemoveAll(c.pgDir)
	}
}

// live are the instances not killed.
func (c *cluster) live() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i := range c.instances {
		if !c.down[i] {
			out = append(out, i)
		}
	}
	return out
}

func (c *cluster) setDown(i int, down bool) {
	c.mu.Lock()
	c.down[i] = down
	c.mu.Unlock()
}

// devices reads every live instance and keeps, for each device, the
// freshest record: the owner's, which has heard the device's latest Event
// (the others read the database every lease/3).
func (c *cluster) devices(ctx context.Context) (map[string]seen, error) {
	live := c.live()
	views := make([][]fleet.Device, len(live))
	errs := make([]error, len(live))
	var wg sync.WaitGroup
	for k, i := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			views[k], errs[k] = c.apis[i].Devices(ctx)
		}()
	}
	wg.Wait()
	out := map[string]seen{}
	answered := 0
	for k := range live {
		if errs[k] != nil {
			continue
		}
		answered++
		for _, d := range views[k] {
			if old, ok := out[d.ID]; !ok || fresher(d.VC, old.VC) {
				out[d.ID] = seen{Device: d} // read by a poll: learned now
			}
		}
	}
	if answered == 0 {
		return nil, fmt.Errorf("no controller instance answered: %w", errors.Join(errs...))
	}
	return out, nil
}

// fresher reports whether a record with clock a is newer than one with b:
// it dominates, or (concurrent copies) it counts more events.
func fresher(a, b protocol.Clock) bool {
	switch a.Compare(b) {
	case protocol.After:
		return true
	case protocol.Concurrent:
		return a[0]+a[1] > b[0]+b[1]
	}
	return false
}

// set sends a remote write to the live instances in turn: one that cannot
// take it (not reachable, its store out of reach, not ready) is counted
// and the write tried on the next (retrySet), until ctx is done.
func (c *cluster) set(ctx context.Context, id string, changes map[string]any) (fleet.Device, error) {
	tries := 0
	return retrySet(ctx, c.slots, id, func(ctx context.Context) (fleet.Device, error) {
		if tries++; tries > 1 {
			c.retried.Add(1)
		}
		live := c.live()
		if len(live) == 0 {
			return fleet.Device{}, fmt.Errorf("set %s: %w: every instance is down", id, api.ErrUnreachable)
		}
		i := live[int(c.next.Add(1))%len(live)]
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		d, err := c.apis[i].Set(wctx, id, changes)
		if err != nil {
			return d, fmt.Errorf("instance %s: %w", c.names[i], err)
		}
		return d, nil
	})
}

// status reads instance i's /healthz (its part in the cluster).
func (c *cluster) status(ctx context.Context, i int) (*fleet.InstanceStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := c.apis[i].Health(ctx)
	if err != nil {
		return nil, err
	}
	if st.Instance == nil {
		return nil, fmt.Errorf("instance %s: not one of several (no PostgreSQL store?)", c.names[i])
	}
	return st.Instance, nil
}

// takenOver reports whether the instances other than victim all see it
// gone and act for every one of n devices between them.
func (c *cluster) takenOver(ctx context.Context, victim, n int) bool {
	owned := 0
	for i := range c.instances {
		if i == victim {
			continue
		}
		st, err := c.status(ctx, i)
		if err != nil || !st.Active || slices.Contains(st.Live, c.names[victim]) {
			return false
		}
		owned += st.Owned
	}
	return owned >= n
}

// The cluster is the harness's controller: devices and set above, and no
// broker link of its own to time.
func (*cluster) firstFlip(bool, time.Time) (time.Time, bool) { return time.Time{}, false }
func (*cluster) close()                                      {}

// failure is one cluster fault in progress: what was faulted, and what
// its watcher measured.
type failure struct {
	fault   string
	fo      *report.Failover
	victim  int
	restore func(ctx context.Context) error
	watch   func(fn func(ctx context.Context)) // runs fn until stop
	stop    func()                             // ends the watchers
}

// failoverFault reports whether the cluster rides fault out by failing
// over (another instance, another node) rather than waiting for the part
// to return: the devices' changes are then made early in the fault and
// their resync measured from them (harness.go's cycle).
func failoverFault(fault string) bool {
	return fault == FaultKillInstance || fault == FaultKillNode || fault == FaultPartitionPostgres
}

// watchResync polls the controller while the fault lasts and notes when
// it holds each device's changes.
func (f *failure) watchResync(_ context.Context, r *run, tracks []*track) {
	f.watch(func(ctx context.Context) {
		for {
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			view, err := r.ctrl.devices(qctx)
			cancel()
			now := time.Now()
			if err == nil {
				for _, tr := range tracks {
					if tr.resyncAt.IsZero() {
						tr.observe(view[tr.d.id].Props, view[tr.d.id].when(now))
					}
				}
			}
			t := time.NewTimer(r.poll)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	})
}

// newFailover returns a Failover with nothing measured yet.
func newFailover(part string) *report.Failover {
	return &report.Failover{Part: part, TakeoverS: report.NaN, StoppedS: report.NaN, LeaseEndS: report.NaN,
		FailoverP50S: report.NaN, FailoverMaxS: report.NaN}
}

// inject faults the cluster's part for cycle n and starts watching the
// failover; restore undoes the fault.
func (r *run) inject(ctx context.Context, fault string, n int, tFault time.Time) (*failure, error) {
	c := r.cl
	f := &failure{fault: fault}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	f.stop = func() { cancel(); wg.Wait() }
	watch := func(fn func(ctx context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); fn(wctx) }()
	}
	f.watch = watch
	switch fault {
	case FaultKillInstance:
		f.victim = (n - 1) % len(c.instances)
		f.fo = newFailover("instance " + c.names[f.victim])
		c.setDown(f.victim, true)
		if err := c.instances[f.victim].Kill(ctx); err != nil {
			cancel()
			return nil, err
		}
		watch(func(ctx context.Context) { r.watchTakeover(ctx, f, tFault) })
		f.restore = func(ctx context.Context) error {
			if _, err := startPart(ctx, c.instances[f.victim]); err != nil {
				return err
			}
			c.setDown(f.victim, false)
			return nil
		}
	case FaultPartitionPostgres:
		f.victim = (n - 1) % len(c.instances)
		f.fo = newFailover("instance " + c.names[f.victim] + " from postgres")
		if end, err := r.leaseEnd(ctx, f.victim); err == nil {
			f.fo.LeaseEndS = report.Dur(end.Sub(tFault))
		}
		c.proxies[f.victim].Hold()
		watch(func(ctx context.Context) { r.watchStopped(ctx, f, tFault) })
		watch(func(ctx context.Context) { r.watchTakeover(ctx, f, tFault) })
		f.restore = func(context.Context) error { c.proxies[f.victim].Release(); return nil }
	case FaultKillNode:
		f.victim = (n - 1) % len(c.nodes)
		f.fo = newFailover("node " + strconv.Itoa(f.victim+1))
		if err := c.nodes[f.victim].Kill(ctx); err != nil {
			cancel()
			return nil, err
		}
		f.restore = func(ctx context.Context) error {
			_, err := startPart(ctx, c.nodes[f.victim])
			return err
		}
	case FaultRestartPostgres:
		f.fo = newFailover("postgres")
		if err := c.pg.Stop("immediate"); err != nil {
			cancel()
			return nil, err
		}
		f.restore = func(context.Context) error { return c.pg.Start() }
	default:
		cancel()
		return nil, fmt.Errorf("not a cluster fault: %s", fault)
	}
	r.cl.retried.Store(0)
	return f, nil
}

// watchTakeover records when the others act for every device after the
// fault of f's instance.
func (r *run) watchTakeover(ctx context.Context, f *failure, tFault time.Time) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if r.cl.takenOver(ctx, f.victim, len(r.devs)) {
			f.fo.TakeoverS = report.Dur(time.Since(tFault))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchStopped records when the instance cut from the database stops
// acting, and whether another took one of its devices before.
func (r *run) watchStopped(ctx context.Context, f *failure, tFault time.Time) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := r.cl.status(ctx, f.victim)
		if err == nil && !st.Active {
			f.fo.StoppedS = report.Dur(time.Since(tFault))
			return
		}
		// Taken over while it still acts: two owners.
		if r.cl.takenOver(ctx, f.victim, len(r.devs)) {
			f.fo.TwoOwners = true
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// leaseEnd reads when instance i's lease ends, as it last renewed it, from
// the database (directly, not through its proxy).
func (r *run) leaseEnd(ctx context.Context, i int) (time.Time, error) {
	return readLeaseEnd(ctx, r.cl.pg.URL("thermo"), r.cl.names[i])
}

// finish ends the watchers and fills in what the cycle measured from the
// devices (kill-node: who moved, and how fast).
func (r *run) finish(f *failure, tracks []*track, tFault time.Time) *report.Failover {
	f.stop()
	f.fo.WritesRetried = int(r.cl.retried.Load())
	if f.fo.TakeoverS.Valid() && f.fo.StoppedS.Valid() && f.fo.TakeoverS < f.fo.StoppedS {
		f.fo.TwoOwners = true
	}
	if f.fault == FaultKillNode {
		var times []float64
		for _, t := range tracks {
			loss, ok := t.d.firstLossAfter(tFault)
			if !ok {
				continue
			}
			if c := t.d.connected(); c.After(loss) {
				times = append(times, c.Sub(tFault).Seconds())
			}
		}
		f.fo.Moved = len(times)
		if len(times) > 0 {
			f.fo.FailoverP50S = report.Seconds(stats.Percentile(times, 50))
			f.fo.FailoverMaxS = report.Seconds(slices.Max(times))
		}
	}
	return f.fo
}

// checkCluster checks a cluster run's shape.
func (c *Config) checkCluster() error {
	if c.Nodes < 2 || c.Nodes > 9 {
		return fmt.Errorf("--nodes %d: want 2 to 9 broker nodes", c.Nodes)
	}
	if c.Instances < 2 || c.Instances > 26 {
		return fmt.Errorf("--instances %d: want 2 to 26 controller instances", c.Instances)
	}
	if c.Lease < lease.MinLease {
		return fmt.Errorf("--lease %v: at least %v", c.Lease, lease.MinLease)
	}
	for _, p := range c.Faults {
		if (p.Fault == FaultKillInstance || p.Fault == FaultPartitionPostgres) && c.KeepDead < 2*c.Lease+time.Second {
			return fmt.Errorf("--keep-dead %v: %s needs at least two leases and a second (%v) to see the takeover", c.KeepDead, p.Fault, 2*c.Lease+time.Second)
		}
	}
	return nil
}

// setupCluster is setup for --broker aedes-cluster.
func (r *run) setupCluster(ctx context.Context) error {
	cfg := r.cfg
	r.out.status("issuing certificates for %d devices", cfg.Devices+cfg.BaselineDevices)
	var err error
	if r.pki, err = newPKI(filepath.Join(cfg.WorkDir, "pki"), "127.0.0.1"); err != nil {
		return err
	}
	c, err := r.startCluster(ctx)
	if err != nil {
		return err
	}
	r.brokerURL = c.nodeURLs[0]
	r.ctrl = c
	r.poll = max(2*pollEvery, time.Duration(cfg.Devices+cfg.BaselineDevices)*pollPerDevice)
	return r.startDevices(ctx, c.nodeURLs)
}
