// Command s3ecoracle reads S3 Encryption Client objects with the AWS SDK for Go v1
// s3crypto package (DecryptionClientV2). It is driven by tests/interop/oracles.py.
//
// Usage: s3ecoracle <request.json> <response.json>
//
// The request is {"endpoint": "...", "region": "...", "items": [...]}, each item
//
//	{"bucket": "...", "key": "...",
//	 "load_strategy": "default" | "instruction_file",
//	 "suffix": ".instruction",          // only for load_strategy=instruction_file
//	 "kms_key_id": "arn:...",           // CMK passed as KeyId to KMS Decrypt
//	 "any_cmk": false}                  // true: register the ...WithAnyCMK wraps instead
//
// The response is {"results": [{"ok": true, "body_b64": "..."} | {"ok": false, "error": "..."}]},
// one entry per item, in order. One failing object never aborts the batch.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/kms"
	"github.com/aws/aws-sdk-go/service/s3"
	"github.com/aws/aws-sdk-go/service/s3/s3crypto"
)

type item struct {
	Bucket       string `json:"bucket"`
	Key          string `json:"key"`
	LoadStrategy string `json:"load_strategy"`
	Suffix       string `json:"suffix"`
	KMSKeyID     string `json:"kms_key_id"`
	AnyCMK       bool   `json:"any_cmk"`
}

type request struct {
	Endpoint string `json:"endpoint"`
	Region   string `json:"region"`
	Items    []item `json:"items"`
}

type result struct {
	OK      bool   `json:"ok"`
	BodyB64 string `json:"body_b64,omitempty"`
	Error   string `json:"error,omitempty"`
}

func registry(kmsClient *kms.KMS, it item) (*s3crypto.CryptoRegistry, error) {
	cr := s3crypto.NewCryptoRegistry()
	if it.AnyCMK {
		if err := s3crypto.RegisterKMSContextWrapWithAnyCMK(cr, kmsClient); err != nil {
			return nil, err
		}
		if err := s3crypto.RegisterKMSWrapWithAnyCMK(cr, kmsClient); err != nil {
			return nil, err
		}
	} else {
		if it.KMSKeyID == "" {
			return nil, fmt.Errorf("item has no kms_key_id and any_cmk is false")
		}
		if err := s3crypto.RegisterKMSContextWrapWithCMK(cr, kmsClient, it.KMSKeyID); err != nil {
			return nil, err
		}
		if err := s3crypto.RegisterKMSWrapWithCMK(cr, kmsClient, it.KMSKeyID); err != nil {
			return nil, err
		}
	}
	if err := s3crypto.RegisterAESGCMContentCipher(cr); err != nil {
		return nil, err
	}
	// Registers the CEK name "AES/CBC/PKCS5Padding" (only that spelling).
	if err := s3crypto.RegisterAESCBCContentCipher(cr, s3crypto.AESCBCPadder); err != nil {
		return nil, err
	}
	return cr, nil
}

func getOne(sess *session.Session, s3svc *s3.S3, kmsClient *kms.KMS, it item) (body []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	cr, err := registry(kmsClient, it)
	if err != nil {
		return nil, err
	}
	var opts []func(*s3crypto.DecryptionClientOptions)
	switch it.LoadStrategy {
	case "", "default":
		// keep the client's default strategy: metadata (x-amz-key-v2) first, then key+".instruction"
	case "instruction_file":
		suffix := it.Suffix
		if suffix == "" {
			suffix = s3crypto.DefaultInstructionKeySuffix
		}
		opts = append(opts, func(o *s3crypto.DecryptionClientOptions) {
			o.LoadStrategy = s3crypto.S3LoadStrategy{Client: s3svc, InstructionFileSuffix: suffix}
		})
	default:
		return nil, fmt.Errorf("unknown load_strategy %q", it.LoadStrategy)
	}
	client, err := s3crypto.NewDecryptionClientV2(sess, cr, opts...)
	if err != nil {
		return nil, err
	}
	out, err := client.GetObject(&s3.GetObjectInput{
		Bucket: aws.String(it.Bucket),
		Key:    aws.String(it.Key),
	})
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return ioutil.ReadAll(out.Body)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: s3ecoracle <request.json> <response.json>")
		os.Exit(2)
	}
	raw, err := ioutil.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var req request
	if err := json.Unmarshal(raw, &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	region := req.Region
	if region == "" {
		region = "us-east-1"
	}
	sess, err := session.NewSessionWithOptions(session.Options{
		Config: aws.Config{
			Endpoint:         aws.String(req.Endpoint),
			Region:           aws.String(region),
			S3ForcePathStyle: aws.Bool(true),
			DisableSSL:       aws.Bool(strings.HasPrefix(req.Endpoint, "http://")),
			Credentials:      credentials.NewStaticCredentials("testing", "testing", "testing"),
			HTTPClient:       &http.Client{Timeout: 60 * time.Second},
			MaxRetries:       aws.Int(1),
		},
		SharedConfigState: session.SharedConfigDisable,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s3svc := s3.New(sess)
	kmsClient := kms.New(sess)

	results := make([]result, 0, len(req.Items))
	for _, it := range req.Items {
		body, err := getOne(sess, s3svc, kmsClient, it)
		if err != nil {
			results = append(results, result{OK: false, Error: err.Error()})
		} else {
			results = append(results, result{OK: true, BodyB64: base64.StdEncoding.EncodeToString(body)})
		}
	}
	outRaw, err := json.Marshal(map[string]interface{}{"results": results})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := ioutil.WriteFile(os.Args[2], outRaw, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
