import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';

/** Whether this machine has the openssl command (CI installs it). */
export const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

/**
 * Makes a self-signed certificate for localhost and 127.0.0.1 (valid one day) in `dir`:
 * returns the paths of the certificate and its private key (PEM).
 */
export function selfSignedCertificate(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-days',
      '1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  return { cert, key };
}
