// Command mttr is the mean-time-to-recover harness: it faults an MQTT
// broker again and again (kill, hang, partition) under a fleet of real
// thermostat agents and a real controllerlite, and measures how fast each
// device notices, reconnects and gets its latest changes to the controller,
// with no event lost and no conflict won by the wrong side; and it measures
// the same agents on a plain paho.mqtt.golang client with its default
// options, in the same run, as the baseline.
//
//	mttr --broker mosquitto --fault kill --restart-count 50 --devices 100 --json out.json --svg out.svg
//
// Its knobs are named after the variables of the seed script it grew from
// (KEEP_ALIVE, FACTOR_OF_KEEP_ALIVE, KEEP_RUNNING, KEEP_DEAD,
// MQTT_BROKER_RESTART_COUNT). See docs/mttr.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/mttr/harness"
	"github.com/thermofleet/thermo/mttr/report"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // the harness could not run, or an event was lost / a wrong winner / out of sync
	exitUsage   = 2
	exitTargets = 3 // --strict and a recovery target was missed
)

// Set by the Makefile's -ldflags.
var version, commit = "dev", "none"

// errLoss is returned when our devices lost events or let the wrong side
// win; errTargets when --strict and a target was missed.
var (
	errLoss    = errors.New("events lost, wrong winners or devices out of sync")
	errTargets = errors.New("recovery targets missed")
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == harness.ServeCommand {
		os.Exit(serveMain(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode is cli.ExitCode's, with exitTargets for a --strict run that
// missed a target.
func exitCode(err error, stderr io.Writer) int {
	if errors.Is(err, errTargets) {
		fmt.Fprintln(stderr, "mttr:", err)
		return exitTargets
	}
	return cli.ExitCode("mttr", err, stderr)
}

// serveMain is the hidden embedded-serve command: controllerlite with its
// embedded broker, as a child process the harness can kill and stop.
func serveMain(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(args) >= 2 && args[0] == harness.ProfileFlag {
		pctx, cancel := context.WithCancel(ctx)
		stopProfiles, err := harness.StartProfiles(pctx, args[1], "serve")
		if err != nil {
			cancel()
			fmt.Fprintln(os.Stderr, "mttr embedded-serve:", err)
			return exitFailed
		}
		defer func() { cancel(); stopProfiles() }()
		args = args[2:]
	}
	if err := harness.Serve(ctx, args, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mttr embedded-serve:", err)
		return exitFailed
	}
	return exitOK
}

// options are the command line.
type options struct {
	cfg               harness.Config
	fault             string
	restartCount      int
	baseline          int
	jsonFile, svgFile string
	workDir           string
	keepWorkDir       bool
	logFile, logLevel string
	controllerlite    string
	strict            bool
	quiet             bool
	profileDir        string
}

const usage = `Usage: mttr [flags]

Faults an MQTT broker again and again under real thermostat agents and a real
controllerlite, and measures recovery (detection, reconnect, resync), lost
events and wrong conflict winners, against plain paho.mqtt.golang clients on
their default options in the same run.

Examples:
  mttr --broker mosquitto --fault kill --restart-count 50 --devices 100 --json kill.json --svg kill.svg
  mttr --broker aedes --fault hang --keep-alive 5s --restart-count 10
  mttr --fault kill:3,hang:2 --keep-alive 2s --devices 10
  mttr --broker external --external-addr mqtts://localhost:8883 --external-pki ./pki \
       --external-down 'docker stop expecto-patronum' --external-up 'docker start expecto-patronum'

Flags:
`

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("mttr", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	c := &o.cfg
	fs.StringVar(&c.Broker, "broker", harness.BrokerMosquitto, "broker: mosquitto, aedes, embedded (controllerlite's), external, or aedes-cluster (--nodes aedes nodes on Redis, --instances controllers on PostgreSQL)")
	fs.StringVar(&o.fault, "fault", "", "fault mode: kill, hang or partition; with --broker aedes-cluster kill-instance, kill-node, restart-postgres or partition-postgres; or a list MODE[:CYCLES],... such as kill:3,hang:2 (default kill; with aedes-cluster all four)")
	fs.IntVar(&c.Nodes, "nodes", 3, "with --broker aedes-cluster: broker nodes sharing one Redis")
	fs.IntVar(&c.Instances, "instances", 3, "with --broker aedes-cluster: controller instances sharing one PostgreSQL")
	c.Lease = harness.DefaultLease
	fs.Var(seconds{&c.Lease}, "lease", "with --broker aedes-cluster: the controller instances' lease (`DURATION` or seconds)")
	c.KeepAlive = 15 * time.Second
	fs.Var(seconds{&c.KeepAlive}, "keep-alive", "MQTT keep-alive of every client (KEEP_ALIVE): a `DURATION` (15s) or seconds (15)")
	fs.Float64Var(&c.FactorOfKeepAlive, "factor-of-keep-alive", 1, "a killed broker stays down factor × keep-alive (FACTOR_OF_KEEP_ALIVE)")
	c.KeepRunning = 30 * time.Second
	fs.Var(seconds{&c.KeepRunning}, "keep-running", "how long (`DURATION` or seconds) the broker runs between faults (KEEP_RUNNING)")
	fs.Var(seconds{&c.KeepDead}, "keep-dead", "how long (`DURATION` or seconds) a hang or partition lasts (KEEP_DEAD); default 2 × keep-alive")
	fs.IntVar(&o.restartCount, "restart-count", 5, "fault cycles per mode, unless the mode says MODE:CYCLES (MQTT_BROKER_RESTART_COUNT)")
	fs.IntVar(&c.Devices, "devices", 100, "thermostats on our transport")
	fs.IntVar(&o.baseline, "baseline-devices", -1, "thermostats on plain paho.mqtt.golang defaults, the baseline; default as many as --devices, 0 for none")
	c.MaxRecovery = 2 * time.Minute
	fs.Var(seconds{&c.MaxRecovery}, "max-recovery", "how long (`DURATION` or seconds) a cycle waits at most for every device to recover")
	fs.StringVar(&o.jsonFile, "json", "", "write every cycle and the summary as JSON to `FILE`")
	fs.StringVar(&o.svgFile, "svg", "", "write a chart of recovery times per cycle to `FILE`")
	fs.StringVar(&c.DeviceDir, "device-dir", "", "`DIR` for the simulated devices' state (default WORK-DIR/devices); a tmpfs such as /dev/shm/x keeps their fsyncs off the broker's disk, as a real board's own disk would")
	fs.BoolVar(&c.MemoryState, "memory-state", false, "keep the simulated devices' state in memory, not in state directories: no fsync and no file descriptor per device (for thousands of devices; the harness never restarts a device, so nothing reads it back)")
	fs.StringVar(&o.workDir, "work-dir", "", "`DIR` for certificates, broker files, device state and logs; default a temporary directory, removed after a clean run")
	fs.BoolVar(&o.keepWorkDir, "keep-work-dir", false, "keep the work directory")
	fs.StringVar(&o.logFile, "log", "", "components' log `FILE`; default WORK-DIR/mttr.log")
	fs.StringVar(&o.logLevel, "log-level", "info", "components' log level: debug, info, warn or error")
	fs.StringVar(&c.AedesDir, "aedes-dir", "", "the brokers/aedes `DIR` (found from the working directory by default)")
	fs.StringVar(&o.controllerlite, "controllerlite", "", "with --broker embedded or --controller-process, run `BIN serve` instead of this binary's own copy of controllerlite serve")
	fs.BoolVar(&c.ControllerProcess, "controller-process", false, "with --broker mosquitto, aedes or external: run the controller as a process of its own (serve --broker), not in the harness, so that its CPU and memory are measured apart from the simulated devices'")
	fs.StringVar(&c.External.Address, "external-addr", "", "external broker's address, mqtts://HOST:PORT")
	fs.StringVar(&c.External.DownCmd, "external-down", "", "shell command that takes the external broker down (kill)")
	fs.StringVar(&c.External.UpCmd, "external-up", "", "shell command that brings it back")
	fs.StringVar(&c.External.PauseCmd, "external-pause", "", "shell command that hangs it (hang), e.g. docker pause NAME")
	fs.StringVar(&c.External.ResumeCmd, "external-resume", "", "shell command that resumes it, e.g. docker unpause NAME")
	fs.StringVar(&c.ExternalPKI, "external-pki", "", "`DIR` with ca.crt and ca.key of the CA the external broker trusts")
	fs.BoolVar(&o.strict, "strict", false, "exit 3 when a recovery target is missed")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress line")
	fs.StringVar(&o.profileDir, "profile", "", "write CPU (in 2 s slices), block, mutex and heap profiles of the harness and of the embedded broker's (or the controller's) child to `DIR`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", cli.ErrUsage, err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return nil, fmt.Errorf("%w: mttr takes no arguments, got %q", cli.ErrUsage, fs.Arg(0))
	}
	if o.restartCount < 1 {
		return nil, fmt.Errorf("%w: --restart-count %d: want at least 1", cli.ErrUsage, o.restartCount)
	}
	if o.fault == "" {
		o.fault = harness.FaultKill
		if c.Broker == harness.BrokerAedesCluster {
			o.fault = strings.Join([]string{harness.FaultKillInstance, harness.FaultKillNode, harness.FaultRestartPostgres, harness.FaultPartitionPostgres}, ",")
		}
	}
	plans, err := parseFaults(o.fault, o.restartCount)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", cli.ErrUsage, err)
	}
	c.Faults = plans
	if c.KeepDead == 0 {
		c.KeepDead = 2 * c.KeepAlive
		if c.Broker == harness.BrokerAedesCluster {
			// Long enough to see a takeover (two leases) within the fault.
			c.KeepDead = max(c.KeepDead, 2*c.Lease+2*time.Second)
		}
	}
	c.BaselineDevices = o.baseline
	if o.baseline < 0 {
		c.BaselineDevices = c.Devices
	}
	return o, nil
}

// parseFaults reads "kill", "kill,hang" or "kill:3,hang:2".
func parseFaults(s string, cycles int) ([]report.Plan, error) {
	var out []report.Plan
	for _, part := range strings.Split(s, ",") {
		mode, n, hasN := strings.Cut(strings.TrimSpace(part), ":")
		p := report.Plan{Fault: mode, Cycles: cycles}
		switch mode {
		case harness.FaultKill, harness.FaultHang, harness.FaultPartition,
			harness.FaultKillInstance, harness.FaultKillNode, harness.FaultRestartPostgres, harness.FaultPartitionPostgres:
		default:
			return nil, fmt.Errorf("--fault %q: %q is not kill, hang, partition, kill-instance, kill-node, restart-postgres or partition-postgres", s, mode)
		}
		if hasN {
			v, err := strconv.Atoi(n)
			if err != nil || v < 1 {
				return nil, fmt.Errorf("--fault %q: %q is not a number of cycles", s, n)
			}
			p.Cycles = v
		}
		out = append(out, p)
	}
	return out, nil
}

// findAedes looks for brokers/aedes from the working directory up, then
// beside the executable.
func findAedes() string {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			cand := filepath.Join(dir, "brokers", "aedes")
			if _, err := os.Stat(filepath.Join(cand, "server.js")); err == nil {
				return cand
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return filepath.Join("brokers", "aedes")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg := o.cfg
	cfg.Command = "mttr " + strings.Join(args, " ")
	cfg.Version = version + " (" + commit + ")"
	if cfg.AedesDir == "" {
		cfg.AedesDir = findAedes()
	}
	if cfg.Broker == harness.BrokerEmbedded || cfg.Broker == harness.BrokerAedesCluster || cfg.ControllerProcess {
		if o.controllerlite != "" {
			cfg.EmbeddedCmd = []string{o.controllerlite, "serve"}
		} else {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find this binary to run the embedded broker: %w", err)
			}
			cfg.EmbeddedCmd = []string{exe, harness.ServeCommand}
			if o.profileDir != "" {
				cfg.EmbeddedCmd = append(cfg.EmbeddedCmd, harness.ProfileFlag, o.profileDir)
			}
		}
	}
	if o.profileDir != "" {
		pctx, cancel := context.WithCancel(ctx)
		stop, err := harness.StartProfiles(pctx, o.profileDir, "harness")
		if err != nil {
			cancel()
			return err
		}
		defer func() { cancel(); stop() }()
	}

	cfg.WorkDir = o.workDir
	if cfg.WorkDir == "" {
		if cfg.WorkDir, err = os.MkdirTemp("", "mttr-"); err != nil {
			return err
		}
		defer func() {
			if err == nil && !o.keepWorkDir {
				os.RemoveAll(cfg.WorkDir)
			} else {
				fmt.Fprintf(stderr, "mttr: work directory kept: %s\n", cfg.WorkDir)
			}
		}()
	} else if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		return err
	}
	logFile := o.logFile
	if logFile == "" {
		logFile = filepath.Join(cfg.WorkDir, "mttr.log")
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", cli.ErrUsage, o.logLevel)
	}
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	defer lf.Close()
	cfg.Logger = slog.New(slog.NewTextHandler(lf, &slog.HandlerOptions{Level: lv}))
	if !o.quiet {
		cfg.Progress = stderr
		cfg.TTY = isTerminal(stderr)
	}

	perDevice := 2 // its connection and its state directory's lock
	if cfg.MemoryState {
		perDevice = 1
	}
	if n := perDevice*(cfg.Devices+cfg.BaselineDevices) + 500; n > 0 {
		if err := harness.RaiseFileLimit(uint64(n)); err != nil {
			return err
		}
	}
	res, runErr := harness.Run(ctx, cfg)
	if res != nil {
		if err := res.WriteSummary(stdout); err != nil {
			return err
		}
		if o.jsonFile != "" {
			if err := atomicfile.Write(o.jsonFile, 0o644, res.WriteJSON); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "\nJSON: %s\n", o.jsonFile)
		}
		if o.svgFile != "" {
			if err := atomicfile.Write(o.svgFile, 0o644, res.WriteSVG); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "chart: %s\n", o.svgFile)
		}
	}
	if runErr != nil {
		return fmt.Errorf("%w (log: %s)", runErr, logFile)
	}
	if res.Failed() {
		return fmt.Errorf("%w: %d lost events, %d wrong winners, %d out of sync (log: %s)", errLoss,
			res.Summary.LostEvents, res.Summary.WrongWinners, res.Summary.Diverged, logFile)
	}
	if o.strict {
		for _, t := range res.Targets {
			if !t.Met && t.NotEvaluated == "" {
				return fmt.Errorf("%w: %s: want %s, got %s", errTargets, t.Name, t.Want, t.Got)
			}
		}
	}
	return nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// seconds is a duration flag that also takes a bare number of seconds, as
// the seed script's variables were (KEEP_ALIVE=15): --keep-alive 15 and
// --keep-alive 15s are the same.
type seconds struct{ d *time.Duration }

func (s seconds) String() string {
	if s.d == nil || *s.d == 0 {
		return ""
	}
	return s.d.String()
}

func (s seconds) Set(v string) error {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f > math.MaxInt64/float64(time.Second) {
			return fmt.Errorf("%s: want a number of seconds from 0 on", v)
		}
		*s.d = time.Duration(f * float64(time.Second))
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("%s: want a duration such as 15s or 2m, or a number of seconds", v)
	}
	*s.d = d
	return nil
}
