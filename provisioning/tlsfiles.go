package provisioning

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/thermofleet/thermo/protocol"
)

// CommonName returns the Common Name of the first certificate in certFile.
// A device's id is the CN of its certificate; there is no other id to set.
func CommonName(certFile string) (string, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return "", fmt.Errorf("read certificate: %w", err)
	}
	cert, err := parseCertPEM(data)
	if err != nil {
		return "", fmt.Errorf("read certificate %s: %w", certFile, err)
	}
	if cert.Subject.CommonName == "" {
		return "", fmt.Errorf("read certificate %s: no Common Name", certFile)
	}
	return cert.Subject.CommonName, nil
}

// DeviceID returns the device id carried by certFile (its CN) and checks it
// is a valid device id, not the controller's name.
func DeviceID(certFile string) (string, error) {
	cn, err := CommonName(certFile)
	if err != nil {
		return "", err
	}
	if err := protocol.CheckDeviceID(cn); err != nil {
		return "", fmt.Errorf("certificate %s: %w", certFile, err)
	}
	return cn, nil
}

// LoadCertPool reads the PEM certificates of caFile into a pool.
func LoadCertPool(caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("load CA certificate %s: no PEM certificate found", caFile)
	}
	return pool, nil
}

// LoadKeyPair reads a certificate and its key and returns them with the
// certificate's Common Name.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, string, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("load key pair %s, %s: %w", certFile, keyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, "", fmt.Errorf("load key pair %s: %w", certFile, err)
		}
		pair.Leaf = leaf
	}
	return pair, leaf.Subject.CommonName, nil
}

// LoadClientTLS builds the TLS configuration of an MQTT client (device or
// controller): it presents certFile/keyFile and trusts only caFile for the
// broker. ServerName is left empty: set it to the broker's host name, or let
// tls.Dial derive it from the address; verification is never disabled.
func LoadClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := LoadCertPool(caFile)
	if err != nil {
		return nil, err
	}
	pair, _, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		RootCAs:      pool,
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// LoadServerTLS builds the TLS configuration of a broker listener: it
// presents certFile/keyFile and requires every client to present a
// certificate issued by caFile.
func LoadServerTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := LoadCertPool(caFile)
	if err != nil {
		return nil, err
	}
	pair, _, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// PeerCommonName returns the Common Name of the verified client certificate
// of a TLS connection: the identity of an MQTT client.
func PeerCommonName(state tls.ConnectionState) (string, error) {
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return "", errors.New("no verified client certificate")
	}
	return state.VerifiedChains[0][0].Subject.CommonName, nil
}

// ReadCertificate reads the first certificate of a PEM file.
func ReadCertificate(certFile string) (*x509.Certificate, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	cert, err := parseCertPEM(data)
	if err != nil {
		return nil, fmt.Errorf("read certificate %s: %w", certFile, err)
	}
	return cert, nil
}
