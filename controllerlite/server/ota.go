package server

import (
	"context"
	"fmt"
	"net"

	"github.com/thermofleet/thermo/controllerlite/ota"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// newOTA starts the release server and makes the rollout manager.
func (s *Server) newOTA() error {
	cfg := s.cfg
	cert, err := newReloadableCert(cfg.OTACert, cfg.OTAKey)
	if err != nil {
		return fmt.Errorf("--ota-cert: %w", err)
	}
	s.certs = append(s.certs, cert)
	s.rel, err = ota.ListenReleases(ota.ServerOptions{Listen: cfg.OTAListen, Dir: cfg.ReleasesDir, CAFile: cfg.CAFile,
		Certificate: cert.get, Logger: s.log.With("part", "ota")})
	if err != nil {
		return fmt.Errorf("--ota-listen %s: %w", cfg.OTAListen, err)
	}
	port := 0
	if a, ok := s.rel.Addr().(*net.TCPAddr); ok {
		port = a.Port
	}
	s.ota, err = ota.New(ota.Options{
		DataDir: cfg.DataDir, ReleasesDir: cfg.ReleasesDir, Root: cfg.TopicRoot, Port: port, BaseURL: cfg.OTAURL,
		Devices: func() []string {
			var ids []string
			for _, d := range s.fl.Devices() {
				ids = append(ids, d.ID)
			}
			return ids
		},
		Log: s.log.With("part", "ota"),
	})
	return err
}

// attachOTA links the manager to the broker: it hears every device's
// ota_state and publishes offers on each device's ota topic.
func (s *Server) attachOTA() error {
	if s.ota == nil {
		return nil
	}
	filter := protocol.Filter(s.cfg.TopicRoot, protocol.KindOTAState)
	if s.br != nil {
		if err := s.br.Subscribe(filter, func(topic string, payload []byte, _ bool) { s.ota.Receive(topic, payload) }); err != nil {
			return fmt.Errorf("ota: %w", err)
		}
		s.ota.LinkUp(brokerPublisher{s.br})
		return nil
	}
	if err := s.tc.Subscribe(filter, 1); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	s.ota.LinkUp(s.tc)
	return nil
}

// otherMessage takes the external broker's messages beyond the fleet's:
// OTA state reports, certificate requests.
func (s *Server) otherMessage(m transport.Message) {
	if _, k, err := protocol.ParseTopic(s.cfg.TopicRoot, m.Topic); err == nil && k == protocol.KindOTAState {
		if s.ota != nil {
			s.ota.Receive(m.Topic, m.Payload)
		}
		return
	}
	if s.renew != nil {
		s.renew.Receive(m.Topic, m.Payload, m.Retained)
	}
}

// runOTA runs the manager; a device that joins the fleet during a
// rollout gets its offer.
func (s *Server) runOTA(ctx context.Context) {
	w := s.fl.Watch()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		defer w.Close()
		for {
			if _, err := w.Next(ctx); err != nil {
				return
			}
			s.ota.Kick()
		}
	}()
	go func() { defer s.wg.Done(); s.ota.Run(ctx) }()
}

// OTAAddr is the release server's address, nil when OTA is off.
func (s *Server) OTAAddr() net.Addr {
	if s.rel == nil {
		return nil
	}
	return s.rel.Addr()
}

// OTA is the rollout manager, nil when OTA is off.
func (s *Server) OTA() *ota.Manager { return s.ota }

// brokerPublisher publishes through the embedded broker.
type brokerPublisher struct {
	b interface {
		Publish(topic string, payload []byte, retain bool, qos byte) error
	}
}

func (p brokerPublisher) Publish(_ context.Context, topic string, payload []byte, qos byte, retain bool) error {
	return p.b.Publish(topic, payload, retain, qos)
}
