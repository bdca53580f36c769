/**
 * What to check next, per config path. The schema's messages say what is wrong; these say
 * where to look. A path without an entry gets the section's hint, then a general one.
 */
const hints: Record<string, string> = {
  cluster: 'set cluster.name (and apiEndpoint, kubernetesVersion for Kubernetes nodes)',
  'cluster.name': 'the same name tags the etcd volume (zdt:cluster) and names the backups',
  'cluster.kubernetesVersion': "write it as a quoted string: '1.31.4' or '1.31.X'",
  'cluster.apiEndpoint': 'the controlPlaneEndpoint, usually the API load balancer DNS name with :6443',
  node: 'node.role is one of controller, worker, bastion, nat, vpngw',
  'node.role': 'one of controller, worker, bastion, nat, vpngw (tag zdt:role can set it per ASG)',
  'node.controllerIndex': "quote it ('00'), or YAML reads 00 as the number 0; tag zdt:controller-index can set it",
  etcd: 'the etcd section is for controllers: volume, restore and backup of their etcd data (docs/config.md)',
  'etcd.backup.bucket': 'an S3 bucket name (3-63 characters) that the controllers may write to',
  terminate: 'terminate.budget is the hard limit for the whole shutdown step; the parts must fit inside it',
  'terminate.budget': 'keep it below the ASG lifecycle hook timeout and the init system stop timeout',
  ssh: 'bastions need ssh.iamGroup; see docs/ssh-keys.md',
  takeover: 'bastion, nat and vpngw hosts: the Elastic IP, ENI and routes they take over at boot (docs/takeover.md)',
  aws: 'endpoint overrides are for VPC endpoints and the testbed; leave them unset on a normal node',
  log: 'log.level is debug|info|warn|error, log.format human|json',
};

export function hintFor(path: string, code: string): string {
  if (code === 'unknown') {
    const section = path.includes('.') ? path.slice(0, path.lastIndexOf('.')) : '';
    return `remove it or check its spelling; the keys of ${section || 'the top level'} are listed in docs/config.md`;
  }
  for (let p = path; p; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    const h = Object.hasOwn(hints, p) ? hints[p] : undefined;
    if (h) return h;
  }
  return 'see docs/config.md for the allowed values';
}
