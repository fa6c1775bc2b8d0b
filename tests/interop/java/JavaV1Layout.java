// Lays out S3 Encryption Client objects the way the AWS SDK for Java v1 (AmazonS3EncryptionClient)
// writes them with an RSA key pair, using only the JDK's own JCE providers (no BouncyCastle):
//
//   AE  CryptoMode.AuthenticatedEncryption without a provider named "BC": the key-wrap scheme finds
//       no RSA/ECB/OAEPWithSHA-256AndMGF1Padding in "BC", so the data key is encrypted the
//       EncryptionOnly way, Cipher.getInstance(kek.getAlgorithm()) = "RSA" (SunJCE: PKCS#1 v1.5),
//       and no x-amz-wrap-alg is written; the body is AES/GCM/NoPadding, 12-byte IV, 128-bit tag.
//   EO  CryptoMode.EncryptionOnly: x-amz-key (the V1 name), "RSA" again, body AES/CBC/PKCS5Padding
//       with a 16-byte IV.
//
// Both: a 256-bit AES data key from KeyGenerator("AES"), x-amz-matdesc "{}" (no description),
// x-amz-unencrypted-content-length. The program writes no S3 request: it prints the user metadata
// as JSON and writes the body next to its input; the test uploads both with boto3.
//
//   java JavaV1Layout <public-key.der> AE|EO:<plaintext-file> ...
//   -> <plaintext-file>.body, and one JSON object per line on stdout: {"file":..., "metadata":{...}}
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.spec.X509EncodedKeySpec;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.Map;
import javax.crypto.Cipher;
import javax.crypto.KeyGenerator;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.IvParameterSpec;

public final class JavaV1Layout {
    private static final SecureRandom RANDOM = new SecureRandom();

    public static void main(String[] args) throws Exception {
        PublicKey kek = KeyFactory.getInstance("RSA")
                .generatePublic(new X509EncodedKeySpec(Files.readAllBytes(Path.of(args[0]))));
        for (int i = 1; i < args.length; i++) {
            String mode = args[i].substring(0, 2);
            Path input = Path.of(args[i].substring(3));
            byte[] plaintext = Files.readAllBytes(input);
            Map<String, String> metadata = new LinkedHashMap<>();
            Files.write(Path.of(input + ".body"), encrypt(mode, kek, plaintext, metadata));
            StringBuilder json = new StringBuilder("{\"file\":\"" + input + "\",\"metadata\":{");
            String separator = "";
            for (Map.Entry<String, String> entry : metadata.entrySet()) {
                json.append(separator).append('"').append(entry.getKey()).append("\":\"")
                    .append(entry.getValue().replace("\\", "\\\\").replace("\"", "\\\"")).append('"');
                separator = ",";
            }
            System.out.println(json.append("}}"));
        }
    }

    private static byte[] encrypt(String mode, PublicKey kek, byte[] plaintext, Map<String, String> metadata)
            throws Exception {
        KeyGenerator generator = KeyGenerator.getInstance("AES");
        generator.init(256, RANDOM);
        SecretKey cek = generator.generateKey();
        Cipher wrap = Cipher.getInstance(kek.getAlgorithm());  // "RSA": the JDK's default, PKCS#1 v1.5
        wrap.init(Cipher.ENCRYPT_MODE, kek, RANDOM);
        String encryptedKey = Base64.getEncoder().encodeToString(wrap.doFinal(cek.getEncoded()));
        Base64.Encoder b64 = Base64.getEncoder();
        byte[] body;
        if (mode.equals("AE")) {
            byte[] iv = new byte[12];
            RANDOM.nextBytes(iv);
            Cipher content = Cipher.getInstance("AES/GCM/NoPadding");
            content.init(Cipher.ENCRYPT_MODE, cek, new GCMParameterSpec(128, iv));
            body = content.doFinal(plaintext);
            metadata.put("x-amz-key-v2", encryptedKey);
            metadata.put("x-amz-iv", b64.encodeToString(iv));
            metadata.put("x-amz-matdesc", "{}");
            metadata.put("x-amz-cek-alg", "AES/GCM/NoPadding");
            metadata.put("x-amz-tag-len", "128");
        } else if (mode.equals("EO")) {
            byte[] iv = new byte[16];
            RANDOM.nextBytes(iv);
            Cipher content = Cipher.getInstance("AES/CBC/PKCS5Padding");
            content.init(Cipher.ENCRYPT_MODE, cek, new IvParameterSpec(iv));
            body = content.doFinal(plaintext);
            metadata.put("x-amz-key", encryptedKey);
            metadata.put("x-amz-iv", b64.encodeToString(iv));
            metadata.put("x-amz-matdesc", "{}");
        } else {
            throw new IllegalArgumentException("mode must be AE or EO: " + mode);
        }
        metadata.put("x-amz-unencrypted-content-length", Long.toString(plaintext.length));
        return body;
    }
}
