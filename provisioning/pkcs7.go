package provisioning

// A certs-only PKCS#7 (RFC 2315 degenerate SignedData, the shape RFC 7030
// EST answers with): no signers, the certificates only. Go's standard
// library has no PKCS#7; this is the minimum EST needs, both ways.

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

var (
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
)

type pkcs7ContentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue
}

type pkcs7Inner struct {
	ContentType asn1.ObjectIdentifier
}

type pkcs7SignedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	ContentInfo      pkcs7Inner
	Certificates     asn1.RawValue
	SignerInfos      asn1.RawValue
}

// EncodeCertsOnly returns the DER of a certs-only PKCS#7 of certs.
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	emptySet := asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: []byte{}}
	sd, err := asn1.Marshal(pkcs7SignedData{
		Version:          1,
		DigestAlgorithms: emptySet,
		ContentInfo:      pkcs7Inner{ContentType: oidData},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: raw},
		SignerInfos:      emptySet,
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs7: %w", err)
	}
	der, err := asn1.Marshal(pkcs7ContentInfo{
		ContentType: oidSignedData,
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sd},
	})
	if err != nil {
		return nil, fmt.Errorf("pkcs7: %w", err)
	}
	return der, nil
}

// DecodeCertsOnly returns the certificates of a PKCS#7 SignedData (its
// signers, if any, are ignored: EST's answers have none).
func DecodeCertsOnly(der []byte) ([]*x509.Certificate, error) {
	var ci pkcs7ContentInfo
	if rest, err := asn1.Unmarshal(der, &ci); err != nil {
		return nil, fmt.Errorf("pkcs7: %w", err)
	} else if len(rest) > 0 {
		return nil, errors.New("pkcs7: trailing data")
	}
	if !ci.ContentType.Equal(oidSignedData) || ci.Content.Class != asn1.ClassContextSpecific || ci.Content.Tag != 0 {
		return nil, errors.New("pkcs7: not a SignedData")
	}
	var seq asn1.RawValue
	if _, err := asn1.Unmarshal(ci.Content.Bytes, &seq); err != nil {
		return nil, fmt.Errorf("pkcs7: %w", err)
	}
	rest := seq.Bytes
	for len(rest) > 0 {
		var el asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &el); err != nil {
			return nil, fmt.Errorf("pkcs7: %w", err)
		}
		if el.Class == asn1.ClassContextSpecific && el.Tag == 0 {
			certs, err := x509.ParseCertificates(el.Bytes)
			if err != nil {
				return nil, fmt.Errorf("pkcs7: %w", err)
			}
			return certs, nil
		}
	}
	return nil, errors.New("pkcs7: no certificates")
}
