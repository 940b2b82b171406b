package protocol

import (
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

var (
	simSeeds = flag.Int("sim.seeds", 300, "number of random seeds TestSimulation runs")
	simSeed  = flag.Int("sim.seed", -1, "run only this seed of TestSimulation, with its whole trace")
)

// TestSimulation runs one controller and several devices against a simulated
// broker and network that drops, duplicates, delays and reorders messages,
// redelivers retained ones, and restarts either side from its stored state.
// After the network heals and a final exchange every pair must agree on every
// property, and every concurrent conflict must have been won by the device.
func TestSimulation(t *testing.T) {
	n := *simSeeds
	if testing.Short() {
		n = 30
	}
	conflicts := 0
	first := uint64(0)
	if *simSeed >= 0 {
		first, n = uint64(*simSeed), *simSeed+1
	}
	for seed := first; seed < uint64(n); seed++ {
		s := newSim(seed, 2+int(seed%4))
		s.wipes = seed%2 == 1
		if err := s.run(300 + int(seed%200)); err != nil {
			t.Fatalf("seed %d: %v\nreplay with the whole trace: go test ./protocol -run TestSimulation -sim.seed=%d\n%s", seed, err, seed, s.trace(*simSeed >= 0))
		}
		conflicts += s.conflicts
	}
	// The simulation must really produce the case the rule is for.
	if conflicts == 0 {
		t.Fatal("no concurrent conflict happened in any seed")
	}
	t.Logf("%d seeds, %d concurrent conflicts settled", n, conflicts)
}

type simMsg struct {
	from     string // the publisher, for messages on their way to the broker
	to       string // "broker", "controller" or a device id
	topic    string
	payload  []byte
	retained bool
	// know is the oracle's view of what the sender knew when it sent: the
	// ids of every write it had made or heard of. Not on the wire.
	know map[int]bool
}

type writeRec struct {
	id     int
	seen   map[int]bool // writes its side knew of when it was made
	w      Clock
	val    any
	device bool
	// mayLose marks a write made before its side lost its store: if it never
	// left that side, it is gone with the store, legitimately.
	mayLose bool
}

type simDev struct {
	id        string
	d         *Device
	stored    DeviceState
	connected bool
	// atRisk marks a device whose store was lost again before it had
	// caught up from an earlier loss (still rejoining, or its writes still
	// unconfirmed): a double fault. Its clock may restart below what the
	// controller counted with nothing left anywhere to recover it, so its
	// writes until the controller has caught up may be lost. Cleared by a
	// live Command that counts no more device events than the device does.
	atRisk bool
}

type sim struct {
	rng       *rand.Rand
	root      string
	ids       []string
	ctl       *Controller
	ctlStored map[string]*Replica
	devs      map[string]*simDev
	retained  map[string]simMsg
	// lostCmd marks a device whose retained Command the broker lost and
	// has not had again; ctlAtRisk a device the controller lost its store
	// for meanwhile. That double fault leaves a controller nothing to
	// recover its counter for the device from (neither its store nor the
	// broker remembers the Commands it sent): it may stamp a new write
	// with a stamp the device already holds for an older one, and the
	// sides can disagree until one of them writes again. The same limit
	// as a board's double fault (README, "How the sync behaves").
	lostCmd, ctlAtRisk map[string]bool
	know               map[string]map[int]bool // per side: "d1", "controller/d1"
	seq                int
	inflight           []simMsg
	lossy              bool
	wipes              bool                             // sides may lose their stores
	writes             map[string]map[string][]writeRec // device id, property
	conflicts          int
	log                []string
}

func newSim(seed uint64, devices int) *sim {
	s := &sim{
		rng:       rand.New(rand.NewPCG(seed, 0x7e57)),
		root:      DefaultRoot,
		ctlStored: map[string]*Replica{},
		devs:      map[string]*simDev{},
		retained:  map[string]simMsg{},
		lostCmd:   map[string]bool{}, ctlAtRisk: map[string]bool{},
		know:   map[string]map[int]bool{},
		lossy:  true,
		writes: map[string]map[string][]writeRec{},
	}
	for i := range devices {
		id := fmt.Sprintf("d%d", i+1)
		s.ids = append(s.ids, id)
		// First boot: no stored state, so every device starts by rejoining.
		d, err := NewDevice(map[string]any{PropSetpoint: 20.0, PropMode: ModeHeat})
		if err != nil {
			panic(err)
		}
		s.devs[id] = &simDev{id: id, d: d, stored: d.State()}
		s.writes[id] = map[string][]writeRec{}
		s.record(id, d.Props(), false)
	}
	s.startController()
	for _, id := range s.ids {
		s.connect(s.devs[id])
	}
	return s
}

func (s *sim) logf(format string, args ...any) { s.log = append(s.log, fmt.Sprintf(format, args...)) }

func (s *sim) trace(all bool) string {
	start := max(0, len(s.log)-60)
	if all {
		start = 0
	}
	return "last steps:\n  " + strings.Join(s.log[start:], "\n  ")
}

// flushOthers delivers everything in flight that does not involve the
// client losing its store: re-imaging a card or replacing a disk takes
// minutes, and by then every message sent before has arrived, so nothing
// from before the loss arrives as if it were new.
func (s *sim) flushOthers(except string) error {
	for {
		i := slices.IndexFunc(s.inflight, func(m simMsg) bool {
			return (m.to == "broker" && m.from != except) || (m.to != "broker" && m.to != except)
		})
		if i < 0 {
			return nil
		}
		if err := s.deliver(i); err != nil {
			return err
		}
	}
}

// settle ends what a client had on its way to the broker before it lost its
// store: re-imaging takes minutes, so by then each publish either arrived
// or was lost with the connection. A prefix arrives, the rest is lost.
func (s *sim) settle(from string) error {
	for {
		i := slices.IndexFunc(s.inflight, func(m simMsg) bool { return m.to == "broker" && m.from == from })
		if i < 0 {
			return nil
		}
		if s.rng.IntN(2) == 0 {
			s.inflight = slices.DeleteFunc(s.inflight, func(m simMsg) bool { return m.to == "broker" && m.from == from })
			return nil
		}
		if err := s.deliver(i); err != nil {
			return err
		}
	}
}

// side names a side's knowledge: a device, or the controller's replica of it.
func (s *sim) side(id string, device bool) string {
	key := "controller/" + id
	if device {
		key = id
	}
	if s.know[key] == nil {
		s.know[key] = map[int]bool{}
	}
	return key
}

// learn adds what a message's sender knew to what its receiver knows.
func (s *sim) learn(key string, know map[int]bool) {
	for w := range know {
		s.know[key][w] = true
	}
}

// forget marks the writes of one side for a device as lost with its store.
func (s *sim) forget(id string, device bool) {
	for _, recs := range s.writes[id] {
		for i := range recs {
			if recs[i].device == device {
				recs[i].mayLose = true
			}
		}
	}
}

// record notes writes not seen before: stamps are unique per write, so a
// new stamp in a replica is a new write by that side.
func (s *sim) record(id string, props Props, device bool) {
	key := s.side(id, device)
	for _, name := range slices.Sorted(maps.Keys(props)) {
		p := props[name]
		recs := s.writes[id][name]
		// A stamp may repeat one of a write lost with a wiped store (nobody
		// else ever saw that one); it may not repeat a live one.
		if slices.ContainsFunc(recs, func(r writeRec) bool {
			return r.w == p.W && (!r.mayLose || sameVal(r.val, p.Val))
		}) {
			continue
		}
		s.seq++
		s.writes[id][name] = append(recs, writeRec{id: s.seq, seen: maps.Clone(s.know[key]), w: p.W, val: p.Val, device: device,
			mayLose: device && s.devs[id].atRisk})
		s.know[key][s.seq] = true
	}
}

func (s *sim) publish(from string, topic string, payload []byte, retain bool) {
	id, _, _ := ParseTopic(s.root, topic)
	know := maps.Clone(s.know[s.side(id, from != "controller")])
	s.inflight = append(s.inflight, simMsg{from: from, to: "broker", topic: topic, payload: payload, retained: retain, know: know})
	s.logf("%s publishes %s %s", from, topic, payload)
}

func (s *sim) publishMsg(from, topic string, m *Message) {
	if m == nil {
		return
	}
	b, err := m.Encode()
	if err != nil {
		panic(err)
	}
	s.publish(from, topic, b, true)
}

// subscribers returns who receives topic.
func (s *sim) subscribers(topic string) []string {
	id, kind, err := ParseTopic(s.root, topic)
	if err != nil {
		panic(err)
	}
	var out []string
	if s.ctl != nil && kind != KindTelemetry {
		out = append(out, "controller")
	}
	if dv := s.devs[id]; dv.connected && (kind == KindCmd || (kind == KindEvent && dv.d.Rejoining())) {
		out = append(out, id)
	}
	return out
}

func (s *sim) connect(dv *simDev) {
	dv.connected = true
	// Subscribing delivers what is retained on the topics subscribed.
	for _, k := range []Kind{KindCmd, KindEvent} {
		if k == KindEvent && !dv.d.Rejoining() {
			continue
		}
		if r, ok := s.retained[Topic(s.root, dv.id, k)]; ok {
			s.inflight = append(s.inflight, simMsg{to: dv.id, topic: r.topic, payload: r.payload, retained: true, know: r.know})
		}
	}
	s.publish(dv.id, Topic(s.root, dv.id, KindStatus), Status{Online: true}.Encode(), true)
	m := dv.d.Connect()
	dv.stored = dv.d.State()
	s.publishMsg(dv.id, Topic(s.root, dv.id, KindEvent), m)
}

// disconnect ends a device's connection. What it had sent either reached
// the broker before the connection ended or was lost with it: nothing of
// an old connection arrives after a new one starts.
func (s *sim) disconnect(dv *simDev) {
	if err := s.settle(dv.id); err != nil {
		panic(err)
	}
	dv.connected = false
	dv.d.Disconnect()
	// The broker publishes the will.
	s.inflight = append(s.inflight, simMsg{from: dv.id, to: "broker", topic: Topic(s.root, dv.id, KindStatus), payload: Status{}.Encode(), retained: true})
	s.inflight = slices.DeleteFunc(s.inflight, func(m simMsg) bool { return m.to == dv.id })
}

func (s *sim) startController() {
	s.ctl = NewController(s.ctlStored)
	s.inflight = slices.DeleteFunc(s.inflight, func(m simMsg) bool { return m.to == "controller" })
	topics := make([]string, 0, len(s.retained))
	for topic := range s.retained {
		topics = append(topics, topic)
	}
	slices.Sort(topics)
	s.rng.Shuffle(len(topics), func(i, j int) { topics[i], topics[j] = topics[j], topics[i] })
	for _, topic := range topics {
		r := s.retained[topic]
		s.inflight = append(s.inflight, simMsg{to: "controller", topic: topic, payload: r.payload, retained: true, know: r.know})
	}
	s.maybeReady()
}

// maybeReady ends the controller's read of retained state once every
// retained delivery to it has been handled.
func (s *sim) maybeReady() {
	if s.ctl.IsReady() || slices.ContainsFunc(s.inflight, func(m simMsg) bool { return m.to == "controller" && m.retained }) {
		return
	}
	greetings := s.ctl.Ready()
	for _, id := range slices.Sorted(maps.Keys(greetings)) {
		g := greetings[id]
		s.persistController(id)
		s.publishMsg("controller", Topic(s.root, id, KindCmd), &g)
	}
}

func (s *sim) persistController(id string) { s.ctlStored[id] = s.ctl.Replica(id) }

func (s *sim) deliver(i int) error {
	m := s.inflight[i]
	if m.to == "broker" {
		// One client's publishes reach the broker in order (one TCP
		// connection); only deliveries to subscribers are reordered.
		i = slices.IndexFunc(s.inflight, func(o simMsg) bool { return o.to == "broker" && o.from == m.from })
		m = s.inflight[i]
	}
	s.inflight = slices.Delete(s.inflight, i, i+1)
	if m.to == "broker" {
		if m.retained {
			s.retained[m.topic] = m
			if id, k, err := ParseTopic(s.root, m.topic); err == nil && k == KindCmd {
				delete(s.lostCmd, id)
			}
		}
		for _, sub := range s.subscribers(m.topic) {
			s.inflight = append(s.inflight, simMsg{to: sub, topic: m.topic, payload: m.payload, know: m.know})
		}
		return nil
	}
	id, kind, _ := ParseTopic(s.root, m.topic)
	s.logf("%s receives %s %s retained=%v", m.to, m.topic, m.payload, m.retained)
	if m.to == "controller" {
		defer s.maybeReady()
		switch kind {
		case KindStatus:
			st, err := DecodeStatus(m.payload)
			if err != nil {
				return err
			}
			if !st.Online {
				s.ctl.Offline(id)
				s.persistController(id)
				return nil
			}
			g := s.ctl.Online(id)
			s.persistController(id)
			s.publishMsg("controller", Topic(s.root, id, KindCmd), g)
		case KindEvent, KindCmd:
			msg, issues, err := DecodeMessage(m.payload)
			if err != nil || len(issues) > 0 {
				return fmt.Errorf("own payload rejected: %v %v", err, issues)
			}
			var out Outcome
			var resync *Message
			if kind == KindEvent {
				out, resync, err = s.ctl.ReceiveEvent(id, msg)
			} else {
				out, err = s.ctl.ReceiveCommand(id, msg)
			}
			if err != nil {
				return fmt.Errorf("own payload refused: %w", err)
			}
			// What a receive takes in, it knows from now on; a duplicate is
			// taken in not at all.
			if !out.Duplicate {
				s.learn(s.side(id, false), m.know)
			}
			s.conflicts += len(out.Conflicts)
			s.persistController(id)
			s.publishMsg("controller", Topic(s.root, id, KindCmd), resync)
		}
		return nil
	}
	dv := s.devs[m.to]
	msg, issues, err := DecodeMessage(m.payload)
	if err != nil || len(issues) > 0 {
		return fmt.Errorf("own payload rejected: %v %v", err, issues)
	}
	var out Outcome
	var reply *Message
	if kind == KindCmd {
		out, reply, err = dv.d.ReceiveCommand(msg, m.retained)
		if !m.retained && !out.Duplicate && !out.OwnBehind && !dv.d.Rejoining() {
			dv.atRisk = false
		}
	} else {
		out, reply, err = dv.d.ReceiveOwnEvent(msg)
	}
	if err != nil {
		return fmt.Errorf("own payload refused: %w", err)
	}
	if !out.Duplicate {
		s.learn(s.side(dv.id, true), m.know)
	}
	s.conflicts += len(out.Conflicts)
	dv.stored = dv.d.State()
	s.record(dv.id, dv.d.Props(), true)
	s.publishMsg(dv.id, Topic(s.root, dv.id, KindEvent), reply)
	return nil
}

// randomValue is a change a person (or the schedule) makes, given the
// values in force: a mode, a setpoint, a preset, new presets or a new week
// program. The rules that tie presets to the setpoint (ExpandWrite) then
// add to it what they add for every writer.
func (s *sim) randomValue(current map[string]any) map[string]any {
	setpoint := func() float64 { return RoundSetpoint(MinSetpoint + s.rng.Float64()*(MaxSetpoint-MinSetpoint)) }
	switch r := s.rng.IntN(12); {
	case r < 3:
		return map[string]any{PropMode: Modes[s.rng.IntN(len(Modes))]}
	case r < 7:
		v := map[string]any{PropSetpoint: setpoint()}
		if s.rng.IntN(4) == 0 {
			v[PropMode] = Modes[s.rng.IntN(len(Modes))]
		}
		return v
	case r < 9: // a preset in force, or none (a schedule's preset entry too)
		names := append(PresetsIn(current).Names(), PresetNone)
		return map[string]any{PropPreset: names[s.rng.IntN(len(names))]}
	case r < 10:
		ps := Presets{}
		for _, n := range []string{"home", "away", "night", "eco"}[:1+s.rng.IntN(4)] {
			ps[n] = setpoint()
		}
		return map[string]any{PropPresets: ps}
	}
	sch := Schedule{Enabled: s.rng.IntN(2) == 0, Week: map[string][]Entry{}}
	for _, d := range Weekdays[:1+s.rng.IntN(7)] {
		sp := setpoint()
		sch.Week[d] = []Entry{{At: "06:30", SetpointC: &sp}, {At: "22:00", Preset: "home"}}
	}
	return map[string]any{PropSchedule: sch}
}

func (s *sim) step() error {
	dv := s.devs[s.ids[s.rng.IntN(len(s.ids))]]
	switch r := s.rng.IntN(100); {
	case r < 12: // a person, or the schedule's transition, changes the device
		ch := s.randomValue(dv.d.Effective())
		src := SrcButton
		if _, ok := ch[PropMode]; !ok && s.rng.IntN(3) == 0 {
			src = SrcSchedule
		}
		m, err := dv.d.LocalWrite(ch, src)
		if err != nil {
			s.logf("%s local write %v refused: %v", dv.id, ch, err)
			return nil // a preset the presets do not define: refused, as at the device
		}
		dv.stored = dv.d.State()
		s.record(dv.id, dv.d.Props(), true)
		s.logf("%s local write %v -> clock %v", dv.id, ch, dv.d.Clock())
		s.publishMsg(dv.id, Topic(s.root, dv.id, KindEvent), m)
	case r < 22: // a remote user changes it at the controller
		var current map[string]any
		if r := s.ctl.Replica(dv.id); r != nil {
			current = r.Props.Values()
		}
		ch := s.randomValue(current)
		m, err := s.ctl.Set(dv.id, ch)
		if err != nil {
			return nil // not ready, or not heard of yet: the API refuses
		}
		s.persistController(dv.id)
		s.record(dv.id, s.ctl.Replica(dv.id).Props, false)
		s.logf("controller sets %s %v", dv.id, ch)
		s.publishMsg("controller", Topic(s.root, dv.id, KindCmd), &m)
	case r < 62: // deliver something, in any order
		if len(s.inflight) > 0 {
			return s.deliver(s.rng.IntN(len(s.inflight)))
		}
	case r < 70: // a publish is lost in an outage before it reaches the broker
		if len(s.inflight) > 0 && s.lossy {
			i := s.rng.IntN(len(s.inflight))
			if s.inflight[i].to == "broker" {
				s.logf("drop %s from %s", s.inflight[i].topic, s.inflight[i].from)
				s.inflight = slices.Delete(s.inflight, i, i+1)
			}
		}
	case r < 76: // deliver one twice
		if len(s.inflight) > 0 {
			i := s.rng.IntN(len(s.inflight))
			if s.inflight[i].to == "broker" {
				// A client resends what was not acknowledged in its order,
				// so the copy follows the original.
				s.inflight = slices.Insert(s.inflight, i+1, s.inflight[i])
			} else {
				s.inflight = append(s.inflight, s.inflight[i])
			}
		}
	case r < 81: // the broker redelivers a retained message
		topic := Topic(s.root, dv.id, KindCmd)
		if s.rng.IntN(2) == 0 {
			topic = Topic(s.root, dv.id, KindEvent)
		}
		if r, ok := s.retained[topic]; ok {
			for _, sub := range s.subscribers(topic) {
				s.inflight = append(s.inflight, simMsg{to: sub, topic: topic, payload: r.payload, retained: true, know: r.know})
			}
		}
	case r < 87: // connection drops and comes back later
		if dv.connected {
			s.disconnect(dv)
		} else {
			s.connect(dv)
		}
	case r < 91: // the device restarts from its stored state
		if dv.connected {
			s.disconnect(dv)
		}
		dv.d = RestoreDevice(dv.stored)
		s.logf("%s restarts at %v", dv.id, dv.d.Clock())
		s.connect(dv)
	case r < 93: // the controller restarts from its store
		s.logf("controller restarts")
		if err := s.settle("controller"); err != nil {
			return err
		}
		s.startController()
	case r < 94: // the device's card is re-imaged: no stored state
		if !s.wipes {
			break
		}
		if dv.connected {
			s.disconnect(dv)
		}
		if err := s.settle(dv.id); err != nil {
			return err
		}
		if err := s.flushOthers(dv.id); err != nil {
			return err
		}
		s.forget(dv.id, true)
		s.know[dv.id] = map[int]bool{}
		dv.atRisk = dv.atRisk || dv.d.Rejoining() || dv.d.State().Unconfirmed
		dv.d, _ = NewDevice(map[string]any{PropSetpoint: 20.0, PropMode: ModeHeat})
		s.record(dv.id, dv.d.Props(), false)
		s.logf("%s wiped", dv.id)
		s.connect(dv)
	case r < 95: // the controller loses its store
		if !s.wipes {
			break
		}
		if err := s.settle("controller"); err != nil {
			return err
		}
		if err := s.flushOthers("controller"); err != nil {
			return err
		}
		for _, id := range s.ids {
			s.forget(id, false)
			s.know["controller/"+id] = map[int]bool{}
			if s.lostCmd[id] {
				s.ctlAtRisk[id] = true
			}
		}
		clear(s.ctlStored)
		s.logf("controller wiped")
		s.startController()
	case r < 96 && s.wipes && s.rng.IntN(3) == 0: // the broker loses its retained messages
		s.logf("broker loses retained messages")
		clear(s.retained)
		for _, id := range s.ids {
			s.lostCmd[id] = true
		}
	case r < 97: // a rejoining device's sync timeout expires
		// Only once whatever it was sent on subscribing has arrived: the
		// timeout is seconds, a delivery milliseconds.
		if dv.connected && !slices.ContainsFunc(s.inflight, func(m simMsg) bool { return m.to == dv.id }) {
			m := dv.d.SyncTimeout()
			dv.stored = dv.d.State()
			s.record(dv.id, dv.d.Props(), true)
			s.publishMsg(dv.id, Topic(s.root, dv.id, KindEvent), m)
		}
	default:
		for _, id := range s.ids {
			if dv := s.devs[id]; !dv.connected {
				s.connect(dv)
			}
		}
	}
	return nil
}

func (s *sim) drain() error {
	for len(s.inflight) > 0 {
		if err := s.deliver(0); err != nil {
			return err
		}
	}
	return nil
}

func (s *sim) run(steps int) error {
	for range steps {
		if err := s.step(); err != nil {
			return err
		}
	}
	// Heal: nothing more is lost, everything in flight arrives in order.
	s.lossy = false
	s.logf("--- heal")
	if err := s.drain(); err != nil {
		return err
	}
	// The final exchange: every device reconnects once.
	for _, id := range s.ids {
		dv := s.devs[id]
		if dv.connected {
			s.disconnect(dv)
		}
		s.connect(dv)
		if dv.d.Rejoining() {
			// The greeting ends a rejoin; the timeout stands in for it where
			// the controller never heard of the device.
			if err := s.drain(); err != nil {
				return err
			}
			s.publishMsg(id, Topic(s.root, id, KindEvent), dv.d.SyncTimeout())
		}
	}
	if err := s.drain(); err != nil {
		return err
	}
	return s.check()
}

func (s *sim) check() error {
	for _, id := range s.ids {
		dv := s.devs[id]
		if dv.d.Rejoining() {
			return fmt.Errorf("%s still rejoining", id)
		}
		cr := s.ctl.Replica(id)
		if cr == nil {
			return fmt.Errorf("controller never heard of %s", id)
		}
		dp := dv.d.Props()
		if s.ctlAtRisk[id] {
			continue // the controller-side double fault: see ctlAtRisk
		}
		for _, name := range Names {
			c, d := cr.Props[name], dp[name]
			cj, _ := json.Marshal(c)
			dj, _ := json.Marshal(d)
			if string(cj) != string(dj) {
				return fmt.Errorf("%s %s: controller %s, device %s", id, name, cj, dj)
			}
			if _, written := dp[name]; !written {
				continue // never written by either side
			}
			var final *writeRec
			for i, w := range s.writes[id][name] {
				if w.w != d.W || !sameVal(w.val, d.Val) {
					continue
				}
				if final != nil && !final.mayLose && !w.mayLose {
					return fmt.Errorf("%s %s: two writes stamped %v", id, name, d.W)
				}
				if final == nil || final.mayLose {
					final = &s.writes[id][name][i]
				}
			}
			if final == nil || !sameVal(final.val, d.Val) {
				return fmt.Errorf("%s %s: final %v stamped %v is no recorded write", id, name, d.Val, d.W)
			}
			for _, w := range s.writes[id][name] {
				if w.mayLose || w.id == final.id {
					continue
				}
				switch {
				case final.seen[w.id]:
					// final was made knowing w: w is older, rightly replaced.
				case w.seen[final.id]:
					return fmt.Errorf("%s %s: newer write %v (%v) lost to %v (%v), which it had seen", id, name, w.val, w.w, final.val, final.w)
				case w.device && !final.device:
					return fmt.Errorf("%s %s: device write %v (%v) lost a conflict to concurrent controller write %v (%v)", id, name, w.val, w.w, final.val, final.w)
				}
			}
		}
	}
	return nil
}

// sameVal compares property values by their JSON, as the wire does (a
// schedule's entries hold pointers).
func sameVal(a, b any) bool {
	aj, _ := json.Marshal(a)
	bj, _ := json.Marshal(b)
	return string(aj) == string(bj)
}
