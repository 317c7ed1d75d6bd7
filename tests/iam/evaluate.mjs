// Evaluate IAM requests with @cloud-copilot/iam-simulate (pinned in package-lock.json).
// stdin: a JSON list of iam-simulate Simulation objects. stdout: a JSON list, in the same
// order, of {result, deniedBy, ignoredContextKeys, errors}. Called by
// tests/iam/simulator.py, once for every scenario of a test run.
import { getDenialReasons, runSimulation } from '@cloud-copilot/iam-simulate'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return Buffer.concat(chunks).toString('utf8')
}

function statementName(reason) {
  return `${reason.policyType}:${reason.statementId ?? reason.statementIndex}`
}

async function evaluate(simulation) {
  const response = await runSimulation(simulation, { simulationMode: 'Strict' })
  if (response.resultType === 'error') {
    return { result: 'Error', errors: response.errors }
  }
  if (response.resultType !== 'single') {
    return { result: 'Error', errors: { message: `wildcard resource: ${response.resultType}` } }
  }
  const analysis = response.result.analysis
  const denials = analysis.result === 'Allowed' ? [] : getDenialReasons(analysis)
  return {
    result: response.overallResult,
    deniedBy: denials.filter((d) => d.denialType === 'Explicit').map(statementName).sort(),
    ignoredContextKeys: response.result.ignoredContextKeys ?? [],
    errors: null
  }
}

const simulations = JSON.parse(await readStdin())
const results = []
for (const simulation of simulations) results.push(await evaluate(simulation))
process.stdout.write(JSON.stringify(results))
